namespace Strata.Engine.Pools;

public sealed partial class Pool
{
    /// <summary>Log records the open replayed after the checkpoint (white-box tests, diagnostics).</summary>
    internal int ReplayedRecords { get; set; }

    /// <summary>Chunk-map records of the log tail the open dropped because their data did not verify.</summary>
    internal int DroppedTailRecords { get; set; }
}
