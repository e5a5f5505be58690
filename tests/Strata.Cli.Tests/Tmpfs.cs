using System.Diagnostics;

namespace Strata.Cli.Tests;

/// <summary>
/// A small tmpfs mounted for one test: a real filesystem that fills up. Mounting needs root (CI runs
/// as root); elsewhere the test reports Inconclusive. Dispose unmounts it.
/// </summary>
internal sealed class Tmpfs : IDisposable
{
    private Tmpfs(string dir) => Dir = dir;

    public string Dir { get; }

    public static Tmpfs MountOrInconclusive(string dir, string size)
    {
        Directory.CreateDirectory(dir);
        var (code, output) = Run("mount", "-t", "tmpfs", "-o", $"size={size},mode=0755", "strata-test", dir);
        if (code != 0)
            Assert.Inconclusive($"cannot mount a {size} tmpfs at {dir} (exit {code}: {output.Trim()}); this test needs root");
        return new Tmpfs(dir);
    }

    /// <summary>Fills the filesystem with one file, grown until a write fails with ENOSPC; delete it to free the space.</summary>
    public string Fill()
    {
        string path = Path.Combine(Dir, "filler");
        using var f = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, bufferSize: 0);
        var block = new byte[4096];
        try
        {
            while (true)
                f.Write(block);
        }
        catch (IOException e) when (e.HResult == 28)
        {
            return path;
        }
    }

    public void Dispose() => Run("umount", "--lazy", Dir);

    private static (int Code, string Output) Run(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args)
            psi.ArgumentList.Add(a);
        try
        {
            using var p = Process.Start(psi)!;
            string output = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
            p.WaitForExit();
            return (p.ExitCode, output);
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            return (-1, e.Message);
        }
    }
}
