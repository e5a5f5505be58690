using System.Buffers.Binary;
using System.Numerics;

namespace Strata.Engine.Store;

/// <summary>
/// CRC32C (Castagnoli) with the usual pre- and post-inversion, so that
/// Compute(b, Compute(a)) == Compute(a + b). Uses the hardware instruction
/// through BitOperations.Crc32C.
/// </summary>
public static class Crc32C
{
    public static uint Compute(ReadOnlySpan<byte> data, uint previous = 0)
    {
        uint crc = ~previous;
        while (data.Length >= 8)
        {
            crc = BitOperations.Crc32C(crc, BinaryPrimitives.ReadUInt64LittleEndian(data));
            data = data[8..];
        }
        foreach (byte b in data)
            crc = BitOperations.Crc32C(crc, b);
        return ~crc;
    }
}
