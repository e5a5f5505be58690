using System.Diagnostics;
using System.Globalization;
using System.Text;

namespace Strata.Perf.Common;

/// <summary>Runs a reference tool (fio, spdk_nvme_perf) to completion, capturing its output; killed on timeout.</summary>
public static class ExternalTool
{
    public static (int Code, string Stdout, string Stderr) Run(string file, IReadOnlyList<string> args, TimeSpan timeout)
    {
        var psi = new ProcessStartInfo(file)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            StandardOutputEncoding = Encoding.UTF8,
        };
        foreach (var a in args)
            psi.ArgumentList.Add(a);
        using var p = Process.Start(psi) ?? throw new PerfUsageException($"could not start {file}");
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(timeout))
        {
            p.Kill(entireProcessTree: true);
            throw new PerfUsageException($"{Path.GetFileName(file)} did not finish within {timeout.TotalSeconds.ToString(CultureInfo.InvariantCulture)} s");
        }
        p.WaitForExit();
        return (p.ExitCode, stdout.Result, stderr.Result);
    }
}
