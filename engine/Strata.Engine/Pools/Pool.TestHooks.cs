namespace Strata.Engine.Pools;

public sealed partial class Pool
{
    /// <summary>Log records the open replayed after the checkpoint (white-box tests, diagnostics).</summary>
    internal int ReplayedRecords { get; set; }

    /// <summary>Chunk-map records of the log tail the open dropped because their data did not verify.</summary>
    internal int DroppedTailRecords { get; set; }

    /// <summary>Awaited when a writer that found no space starts to ask whether any may come back (PoolLog.FlushForSpaceAsync).</summary>
    internal Func<Task>? BeforeSpaceCheck { get; set; }

    /// <summary>Awaited by a checkpoint that records a dropped target, once every round before it is applied (PoolLog.CheckpointAfterRoundsAsync).</summary>
    internal Func<Task>? BeforeDropCheckpoint { get; set; }

    /// <summary>Called by WritesBlockTables between its lock-free layout read and its locked read of the layout and the job (white-box tests).</summary>
    internal Action? BetweenLayoutAndJob { get; set; }

    /// <summary>Called by WritesBlockTables with its answer, before the write goes on (white-box tests).</summary>
    internal Action<bool>? FormJudged { get; set; }
}
