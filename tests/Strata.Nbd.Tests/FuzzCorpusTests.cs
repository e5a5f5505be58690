using Strata.Fuzz;

namespace Strata.Nbd.Tests;

/// <summary>
/// Runs every committed corpus file of the NBD parsers' fuzz harnesses (tests/Strata.Fuzz/corpus)
/// through the same harness afl-fuzz runs: a client's bytes may be refused only with a typed protocol
/// error or an NBD error reply. The valid-* seeds are well-formed client streams.
/// </summary>
[TestClass]
public sealed class FuzzCorpusTests
{
    [TestMethod]
    [DataRow("nbd-handshake")]
    [DataRow("nbd-request")]
    public void Corpus_EveryFile_ParsesOrRefusesWithTypedError(string harness) => CorpusRunner.Run(harness, NbdHarnesses.All[harness]);
}
