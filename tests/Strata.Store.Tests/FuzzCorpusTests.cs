using Strata.Fuzz;

namespace Strata.Store.Tests;

/// <summary>
/// Runs every committed corpus file of the on-disk decoders' fuzz harnesses (tests/Strata.Fuzz/corpus)
/// through the same harness afl-fuzz runs: a decoder may refuse bytes only with a typed error. The
/// valid-* seeds come from the real encoders and must decode; crash-* files are inputs that once
/// crashed a decoder.
/// </summary>
[TestClass]
public sealed class FuzzCorpusTests
{
    [TestMethod]
    [DataRow("superblock")]
    [DataRow("shard-header")]
    [DataRow("checkpoint")]
    [DataRow("wal")]
    [DataRow("block-table")]
    [DataRow("wal-v2")]
    public void Corpus_EveryFile_DecodesOrRefusesWithTypedError(string harness) => CorpusRunner.Run(harness, StoreHarnesses.All[harness]);
}
