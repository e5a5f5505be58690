using System.CommandLine;
using System.Globalization;
using System.Security.Cryptography;
using Strata.Cli.Output;
using Strata.Engine.Control;
using Strata.Engine.Store;

namespace Strata.Cli.Commands.Image;

/// <summary>
/// `strata image create | list | info | resize | rm`, and `write | read`, which move data through the
/// control API in pieces of at most 1 MiB (the engine's request limit); bulk data goes through NBD
/// (`image info` shows the URIs).
/// </summary>
public static class ImageCommands
{
    private static readonly Option<string> Size = new("--size", "-s") { Description = "Image size, e.g. 10G (thin: no space is used until written)", Required = true };
    private static readonly Option<string> NewSize = new("--size", "-s") { Description = "New size, e.g. 20G, or +10G to grow by 10 GiB", Required = true };
    private static readonly Option<bool> AllowShrink = new("--allow-shrink") { Description = "Confirm a shrink: the data past the new end is dropped" };
    private static readonly Option<string?> ChunkSize = new("--chunk-size") { Description = "Chunk size, a power of two (default: the pool's)" };
    private static readonly Option<string> Offset = new("--offset") { Description = "Byte offset in the image", DefaultValueFactory = _ => "0" };
    private static readonly Option<string?> File = new("--file", "-f") { Description = "Bytes to write ('-' for standard input)" };
    private static readonly Option<string?> Pattern = new("--pattern") { Description = "Write this byte value (0-255, or hex 0x00-0xff) --length times instead of a file" };
    private static readonly Option<string?> Length = new("--length", "-l") { Description = "Number of bytes (read; write with --pattern)" };
    private static readonly Option<string?> Out = new("--out", "-o") { Description = "Write the bytes read to this file ('-' for standard output); else print their SHA-256" };

    private static string ContPath(string[] spec) => $"pools/{Cli.Esc(spec[0])}/containers/{Cli.Esc(spec[1])}";

    private static string ImagesPath(string[] spec) => ContPath(spec) + "/images";

    private static string ImagePath(string[] spec) => ImagesPath(spec) + "/" + Cli.Esc(spec[2]);

    private static int ChunkSizeOf(string s)
    {
        long v = Sizes.Parse(s, "--chunk-size");
        return v <= int.MaxValue ? (int)v : throw new CliException(ExitCodes.Usage, $"--chunk-size {UserText.Quote(s)} is too large (chunks are at most 1M)");
    }

    public static Command Create()
    {
        var create = new Command("create", "Create a thin image in a container");
        var ca = SpecArgs.Add(create, 3);
        create.Options.Add(Size);
        create.Options.Add(ChunkSize);
        create.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            var (spec, _) = ca.Get(parse);
            int chunk = parse.GetValue(ChunkSize) is { } cs ? ChunkSizeOf(cs) : 0;
            var img = await client.PostAsync<ImageDto>(ImagesPath(spec),
                new ImageCreateRequest(spec[2], Sizes.Parse(parse.GetValue(Size)!, "--size"), chunk));
            if (json)
                Cli.PrintJson(img);
            else
                Console.Out.WriteLine($"Image created: {img.Label} in {img.Pool}/{img.Container}, {Sizes.Format(img.Size)}, chunk {Sizes.Format(img.ChunkSize)}");
            return 0;
        }));

        var list = new Command("list", "List the images of a container");
        var la = SpecArgs.Add(list, 2);
        list.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            var (spec, _) = la.Get(parse);
            var imgs = await client.GetAsync<List<ImageDto>>(ImagesPath(spec));
            if (json)
            {
                Cli.PrintJson(imgs);
                return 0;
            }
            if (imgs.Count == 0)
            {
                Console.Out.WriteLine($"No images in {spec[0]}/{spec[1]}");
                return 0;
            }
            var t = new Table("Image", "Id", "Size", "Chunk", "Mapped");
            foreach (var i in imgs)
                t.Add(i.Label, i.Id, Sizes.Format(i.Size), Sizes.Format(i.ChunkSize), Sizes.Format(i.MappedBytes));
            t.Write(Console.Out);
            return 0;
        }));

        var info = new Command("info", "Show an image");
        var ia = SpecArgs.Add(info, 3);
        info.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            var i = await client.GetAsync<ImageDto>(ImagePath(ia.Get(parse).Spec));
            if (json)
            {
                Cli.PrintJson(i);
                return 0;
            }
            Console.Out.WriteLine($"image '{i.Label}' (id {i.Id}) in pool {i.Pool}, container {i.Container}");
            Console.Out.WriteLine($"  size {Sizes.Format(i.Size)} ({i.Size} bytes), chunk {Sizes.Format(i.ChunkSize)}, mapped {Sizes.Format(i.MappedBytes)}");
            if (i.Nbd is { Count: > 0 } uris)
            {
                Console.Out.WriteLine("  nbd:");
                foreach (var u in uris)
                    Console.Out.WriteLine($"    {u}");
            }
            else
            {
                Console.Out.WriteLine("  nbd: not served (no nbd listeners in the engine's configuration)");
            }
            if (i.Alias != null)
                Console.Out.WriteLine($"  alias: {i.Alias} (a migrated image's old name; 'strata image migrate remove-alias {i.Pool}/{i.Container}/{i.Label}' removes it)");
            if (i.Migration is { } m)
                Console.Out.WriteLine($"  migration: {ImageMigrateCommands.Describe(m)}");
            var clients = i.Clients ?? [];
            Console.Out.WriteLine($"  open by {clients.Count} client(s){(clients.Count > 0 ? ":" : "")}");
            foreach (var c in clients)
                Console.Out.WriteLine($"    {c.Kind} {c.Peer} since {c.Since:yyyy-MM-ddTHH:mm:ss}");
            return 0;
        }));

        var resize = new Command("resize", "Grow or shrink an image");
        var ra = SpecArgs.Add(resize, 3);
        resize.Options.Add(NewSize);
        resize.Options.Add(AllowShrink);
        resize.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            var (spec, _) = ra.Get(parse);
            var (size, relative) = Sizes.ParseRelative(parse.GetValue(NewSize)!, "--size");
            if (relative)
            {
                long current = (await client.GetAsync<ImageDto>(ImagePath(spec))).Size;
                size = current <= long.MaxValue - size
                    ? current + size
                    : throw new CliException(ExitCodes.Usage, $"--size {parse.GetValue(NewSize)} grows the image past {long.MaxValue} bytes");
            }
            var i = await client.PostAsync<ImageDto>(ImagePath(spec) + "/resize", new ImageResizeRequest(size, parse.GetValue(AllowShrink)));
            if (json)
                Cli.PrintJson(i);
            else
                Console.Out.WriteLine($"Image resized: {i.Label} is now {Sizes.Format(i.Size)}");
            return 0;
        }));

        var rm = new Command("rm", "Remove an image and free its chunks");
        var xa = SpecArgs.Add(rm, 3);
        rm.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            var (spec, _) = xa.Get(parse);
            await client.DeleteAsync(ImagePath(spec));
            if (json)
                Cli.PrintJson(new { pool = spec[0], container = spec[1], image = spec[2], removed = true });
            else
                Console.Out.WriteLine($"Image removed: {spec[2]}");
            return 0;
        }));

        var write = new Command("write", "Write bytes to an image at an offset (a file, standard input, or a repeated byte)");
        var wa = SpecArgs.Add(write, 3);
        write.Options.Add(Offset);
        write.Options.Add(File);
        write.Options.Add(Pattern);
        write.Options.Add(Length);
        write.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            var (spec, _) = wa.Get(parse);
            long offset = Sizes.Parse(parse.GetValue(Offset)!, "--offset");
            string? file = parse.GetValue(File);
            string? pattern = parse.GetValue(Pattern);
            if ((file == null) == (pattern == null))
                throw new CliException(ExitCodes.Usage, "give either --file F or --pattern BYTE --length N");
            Stream input;
            if (pattern != null)
            {
                byte b = PatternByte(pattern);
                if (parse.GetValue(Length) is not { } l)
                    throw new CliException(ExitCodes.Usage, "--pattern needs --length");
                input = new PatternStream(b, Sizes.Parse(l, "--length"));
            }
            else
            {
                input = file == "-" ? Console.OpenStandardInput() : new FileStream(file!, FileMode.Open, FileAccess.Read);
            }
            long total = 0;
            using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            await using (input)
            {
                var buf = new byte[Strata.Engine.Control.Api.MaxBodyBytes];
                while (true)
                {
                    int n = await input.ReadAtLeastAsync(buf, buf.Length, throwOnEndOfStream: false, ct);
                    if (n == 0)
                        break;
                    await client.PutBytesAsync<WriteResult>(ImagePath(spec) + $"/data?offset={offset + total}", buf.AsMemory(0, n));
                    sha.AppendData(buf, 0, n);
                    total += n;
                    if (n < buf.Length)
                        break;
                }
            }
            string hash = Convert.ToHexStringLower(sha.GetHashAndReset());
            if (json)
                Cli.PrintJson(new { offset, bytes = total, sha256 = hash });
            else
                Console.Out.WriteLine($"Wrote {total} bytes at offset {offset} (sha256 {hash})");
            return 0;
        }));

        var read = new Command("read", "Read bytes from an image");
        var da = SpecArgs.Add(read, 3);
        read.Options.Add(Offset);
        read.Options.Add(Length);
        read.Options.Add(Out);
        read.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            var (spec, _) = da.Get(parse);
            long offset = Sizes.Parse(parse.GetValue(Offset)!, "--offset");
            long length = parse.GetValue(Length) is { } l ? Sizes.Parse(l, "--length") : throw new CliException(ExitCodes.Usage, "--length is required");
            string? outPath = parse.GetValue(Out);
            Stream? output = outPath == null ? null : outPath == "-" ? Console.OpenStandardOutput() : new FileStream(outPath, FileMode.Create, FileAccess.Write);
            using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            try
            {
                for (long done = 0; done < length;)
                {
                    int n = (int)Math.Min(Strata.Engine.Control.Api.MaxBodyBytes, length - done);
                    var bytes = await client.GetBytesAsync(ImagePath(spec) + $"/data?offset={offset + done}&length={n}");
                    sha.AppendData(bytes);
                    if (output != null)
                        await output.WriteAsync(bytes, ct);
                    done += bytes.Length;
                }
            }
            finally
            {
                if (output != null)
                    await output.DisposeAsync();
            }
            string hash = Convert.ToHexStringLower(sha.GetHashAndReset());
            if (outPath == "-")
                return 0;
            if (json)
                Cli.PrintJson(new { offset, bytes = length, sha256 = hash, file = outPath });
            else
                Console.Out.WriteLine($"Read {length} bytes at offset {offset} (sha256 {hash}){(outPath != null ? $" into {outPath}" : "")}");
            return 0;
        }));

        var map = ImageMapCommands.Map(cmd =>
        {
            var a = SpecArgs.Add(cmd, 3);
            return parse => ImagePath(a.Get(parse).Spec);
        });
        return Cli.Group("image", "Images: thin block volumes inside a container", create, list, info, resize, rm, write, read, map, ImageMapCommands.Unmap(), ImageMigrateCommands.Create());
    }

    /// <summary>`--pattern`: a byte in decimal (0-255) or hex (0x00-0xff).</summary>
    public static byte PatternByte(string s)
    {
        string t = s.Trim();
        bool hex = t.StartsWith("0x", StringComparison.OrdinalIgnoreCase);
        string digits = hex ? t[2..] : t;
        var style = hex ? NumberStyles.AllowHexSpecifier : NumberStyles.None;
        return digits.Length is > 0 and <= 3 && byte.TryParse(digits, style, CultureInfo.InvariantCulture, out byte b)
            ? b
            : throw new CliException(ExitCodes.Usage, $"--pattern {UserText.Quote(s)} is not a byte: give 0-255 or 0x00-0xff");
    }

    /// <summary>A stream of one repeated byte (for `image write --pattern`).</summary>
    private sealed class PatternStream(byte value, long total) : Stream
    {
        private readonly long _total = total;
        private long _left = total;

        public override int Read(byte[] buffer, int offset, int count)
        {
            int n = (int)Math.Min(count, _left);
            buffer.AsSpan(offset, n).Fill(value);
            _left -= n;
            return n;
        }

        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => _total;
        public override long Position { get => _total - _left; set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}
