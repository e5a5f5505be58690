using Strata.Engine.Control;

namespace Strata.Cli.Tests;

/// <summary>
/// Sizes and offsets from the command line, near 2^63 and near the documented limits (issue 18,
/// defects 1 and 2): each is refused with one line, and nothing that was there is lost, also after
/// a restart.
/// </summary>
[TestClass]
public sealed class SizeLimitTests
{
    private static async Task<string[]> ImageHashesAsync(StrataCli cli) =>
    [
        await cli.OkAsync("image", "read", "keep", "c", "a", "--offset", "0", "--length", "1M"),
        await cli.OkAsync("image", "read", "keep", "c", "b", "--offset", "0", "--length", "512K"),
    ];

    [TestMethod]
    public async Task PoolCreateAndImageResize_SizesNear2To63_RefusedOneLine_ExistingDataIntactAfterRestart()
    {
        string dir = Bin.NewTempDir("sizes");
        string[] before;
        await using (var engine = await EngineProcess.StartAsync(dir))
        {
            var cli = new StrataCli(engine.Socket);
            await cli.OkAsync("pool", "create", "keep", "--size", "64M");
            await cli.OkAsync("cont", "create", "keep", "c");
            await cli.OkAsync("image", "create", "keep", "c", "a", "--size", "1M");
            await cli.OkAsync("image", "create", "keep", "c", "b", "--size", "512K");
            await cli.OkAsync("image", "write", "keep", "c", "a", "--pattern", "90", "--length", "1M");
            await cli.OkAsync("image", "write", "keep", "c", "b", "--pattern", "165", "--length", "512K");
            before = await ImageHashesAsync(cli);

            // Defect 1: the shard-size arithmetic wrapped and the new pool landed on this one.
            foreach (string size in new[] { "9223372036854775807", "9223372036854775000", "8191P", "1025P", "100" })
            {
                string err = await cli.FailsAsync(2, "pool", "create", "px", "--size", size);
                Assert.AreEqual(1, err.Trim().Split('\n').Length, err);
                Assert.Contains("out of range", err, size);
            }
            string huge = await cli.FailsAsync(2, "pool", "create", "px", "--size", "9223372036854775808");
            StringAssert.Contains(huge, "is too large");
            Assert.AreEqual(2, (await cli.JsonAsync<StorageInfo>("storage", "query")).Targets.Count);

            // Defect 2: a resize to near 2^63 computed a negative chunk count and dropped every chunk.
            foreach (string size in new[] { "9223372036854775807", "9223372036854775000", "1125899906842625" })
            {
                string err = await cli.FailsAsync(2, "image", "resize", "keep", "c", "a", "--size", size);
                Assert.Contains("out of range", err, size);
            }
            string wrap = await cli.FailsAsync(2, "image", "resize", "keep", "c", "a", "--size", "+9223372036854775807");
            StringAssert.Contains(wrap, "grows the image past");
            CollectionAssert.AreEqual(before, await ImageHashesAsync(cli));
            Assert.AreEqual(1L << 20, (await cli.JsonAsync<ImageDto>("image", "info", "keep", "c", "a")).MappedBytes);
        }
        await using (var again = await EngineProcess.StartAsync(dir))
        {
            var cli = new StrataCli(again.Socket);
            var pools = await cli.JsonAsync<List<PoolListEntry>>("pool", "list");
            Assert.AreEqual("keep", pools.Single().Label);
            Assert.Contains("ok", await cli.OkAsync("storage", "query"));
            CollectionAssert.AreEqual(before, await ImageHashesAsync(cli));
        }
        Directory.Delete(dir, recursive: true);
    }

    [TestMethod]
    public async Task ImageResize_ShrinkNeedsAllowShrink_PlusGrows_OffsetsParsedExactly()
    {
        string dir = Bin.NewTempDir("resize");
        await using (var engine = await EngineProcess.StartAsync(dir))
        {
            var cli = new StrataCli(engine.Socket);
            await cli.OkAsync("pool", "create", "p", "--size", "64M");
            await cli.OkAsync("cont", "create", "p", "c");
            await cli.OkAsync("image", "create", "p", "c", "i", "--size", "1M", "--chunk-size", "64K");
            await cli.OkAsync("image", "write", "p", "c", "i", "--pattern", "7", "--length", "1M");

            // A shrink says how much mapped data it drops and needs --allow-shrink.
            string refused = await cli.FailsAsync(2, "image", "resize", "p", "c", "i", "--size", "256K");
            StringAssert.Contains(refused, "drops 786432 bytes of mapped data");
            StringAssert.Contains(refused, "--allow-shrink");
            Assert.AreEqual(1L << 20, (await cli.JsonAsync<ImageDto>("image", "info", "p", "c", "i")).MappedBytes);
            var shrunk = await cli.JsonAsync<ImageDto>("image", "resize", "p", "c", "i", "--size", "256K", "--allow-shrink");
            Assert.AreEqual((256L << 10, 256L << 10), (shrunk.Size, shrunk.MappedBytes));

            // "+128M" grows by 128 MiB; it was once taken as an absolute 128M.
            var grown = await cli.JsonAsync<ImageDto>("image", "resize", "p", "c", "i", "--size", "+128M");
            Assert.AreEqual((256L << 10) + (128L << 20), grown.Size);
            StringAssert.Contains(await cli.FailsAsync(2, "image", "resize", "p", "c", "i", "--size", "-1M"), "is negative");

            // Offsets are integers, not doubles: 2^53 + 3 is echoed exactly, not as ...996.
            string past = await cli.FailsAsync(2, "image", "read", "p", "c", "i", "--offset", "9007199254740995", "--length", "1");
            StringAssert.Contains(past, "at offset 9007199254740995 ");
            foreach (string bad in new[] { "1e3", "0.5", "1,000", "12Q", "" })
                StringAssert.Contains(await cli.FailsAsync(2, "image", "read", "p", "c", "i", "--offset", bad, "--length", "1"), "--offset", bad);
            StringAssert.Contains(await cli.FailsAsync(2, "image", "create", "p", "c", "j", "--size", "1M", "--chunk-size", "4T"), "--chunk-size");
            Assert.AreEqual(1_310_720L, (await cli.JsonAsync<ImageDto>("image", "resize", "p", "c", "i", "--size", "1.25M", "--allow-shrink")).Size);
        }
        Directory.Delete(dir, recursive: true);
    }
}
