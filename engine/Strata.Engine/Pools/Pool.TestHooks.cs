namespace Strata.Engine.Pools;

public sealed partial class Pool
{
    /// <summary>Log records the open replayed after the checkpoint (white-box tests, diagnostics).</summary>
    internal int ReplayedRecords { get; set; }
}
