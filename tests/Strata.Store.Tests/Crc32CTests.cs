using Strata.Engine.Store;

namespace Strata.Store.Tests;

/// <summary>CRC32C over whole buffers and over blocks (the interleaved path a block table uses).</summary>
[TestClass]
public sealed class Crc32CTests
{
    /// <summary>Bitwise CRC32C, the reference the hardware paths must agree with.</summary>
    private static uint Reference(ReadOnlySpan<byte> data)
    {
        uint crc = uint.MaxValue;
        foreach (byte b in data)
        {
            crc ^= b;
            for (int i = 0; i < 8; i++)
                crc = (crc & 1) != 0 ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
        }
        return ~crc;
    }

    [TestMethod]
    public void Compute_EveryLengthUpTo70_MatchesTheBitwiseReference()
    {
        var data = TestDevices.Pattern(70, 9);
        for (int n = 0; n <= data.Length; n++)
            Assert.AreEqual(Reference(data.AsSpan(0, n)), Crc32C.Compute(data.AsSpan(0, n)), $"{n} bytes");
    }

    [TestMethod]
    [DataRow(8, 0)]
    [DataRow(8, 1)]
    [DataRow(8, 3)]
    [DataRow(4096, 4)]
    [DataRow(4096, 7)]
    [DataRow(4096, 256)]
    [DataRow(520, 9)]
    public void ComputeBlocks_AnyCount_EachEqualsComputeOfItsBlock(int blockSize, int blocks)
    {
        var data = TestDevices.Pattern(blockSize * blocks, blocks + blockSize);
        var crcs = new uint[blocks];
        Crc32C.ComputeBlocks(data, blockSize, crcs);
        for (int k = 0; k < blocks; k++)
            Assert.AreEqual(Reference(data.AsSpan(k * blockSize, blockSize)), crcs[k], $"block {k} of {blocks} ({blockSize} bytes)");
    }

    [TestMethod]
    public void ComputeBlocks_LengthNotBlocks_ThrowsNamingSizes()
    {
        var e = Assert.ThrowsExactly<ArgumentException>(() => Crc32C.ComputeBlocks(new byte[4097], 4096, new uint[1]));
        StringAssert.Contains(e.Message, "4097 bytes are not 1 blocks of 4096 bytes");
        Assert.ThrowsExactly<ArgumentException>(() => Crc32C.ComputeBlocks(new byte[12], 12, new uint[1]));
    }
}
