using System.CommandLine;

namespace Strata.Cli;

/// <summary>
/// One example per command, appended to its description ("Example: strata pool create tank --size 10G"),
/// so `--help` on a command and the command list of its group both show how it is typed.
/// </summary>
public static class Examples
{
    private static readonly Dictionary<string, string> ByCommand = new(StringComparer.Ordinal)
    {
        ["system query"] = "strata system query",
        ["system stop"] = "strata system stop",
        ["system events"] = "strata system events --since 1h --severity WARNING",
        ["system prepare"] = "strata system prepare",
        ["system barrier"] = "strata system barrier freeze --timeout 30s",
        ["system barrier freeze"] = "strata system barrier freeze --timeout 30s --pool tank",
        ["system barrier thaw"] = "strata system barrier thaw",
        ["system barrier stat"] = "strata system barrier stat",
        ["system swap"] = "strata system swap --binary /usr/lib/strata/strata-engine --timeout 60s",
        ["system reload-tls"] = "strata system reload-tls",
        ["storage query"] = "strata storage query",
        ["storage add-target"] = "strata storage add-target 'file:/var/lib/strata/target2.img?create=1&size=4G'",
        ["storage exclude-target"] = "strata storage exclude-target 1",
        ["storage reintegrate-target"] = "strata storage reintegrate-target 1",
        ["pool create"] = "strata pool create tank --size 10G --rf 2",
        ["pool list"] = "strata pool list",
        ["pool query"] = "strata pool query tank",
        ["pool clients"] = "strata pool clients tank",
        ["pool get-prop"] = "strata pool get-prop tank",
        ["pool set-prop"] = "strata pool set-prop tank compatibility off",
        ["pool upgrade"] = "strata pool upgrade tank --dry-run",
        ["pool extend"] = "strata pool extend tank --dry-run",
        ["pool destroy"] = "strata pool destroy tank",
        ["cont create"] = "strata cont create tank/vols",
        ["cont list"] = "strata cont list tank",
        ["cont get-prop"] = "strata cont get-prop tank/vols",
        ["cont set-prop"] = "strata cont set-prop tank/vols user.owner alice",
        ["cont destroy"] = "strata cont destroy tank/vols",
        ["image create"] = "strata image create tank/vols/disk0 --size 10G",
        ["image list"] = "strata image list tank/vols",
        ["image info"] = "strata image info tank/vols/disk0",
        ["image resize"] = "strata image resize tank/vols/disk0 --size +1G",
        ["image rm"] = "strata image rm tank/vols/disk0",
        ["image write"] = "strata image write tank/vols/disk0 --offset 1M --pattern 0x5a --length 4K",
        ["image read"] = "strata image read tank/vols/disk0 --offset 1M --length 4K --out block.bin",
        ["image map"] = "strata image map tank/vols/disk0",
        ["image unmap"] = "strata image unmap /dev/nbd0",
        ["image migrate"] = "strata image migrate prepare tank/vols/disk0 fast/vols/disk0",
        ["image migrate prepare"] = "strata image migrate prepare tank/vols/disk0 fast/vols/disk0 --chunk-size 1M",
        ["image migrate execute"] = "strata image migrate execute tank/vols/disk0 --wait",
        ["image migrate commit"] = "strata image migrate commit tank/vols/disk0",
        ["image migrate abort"] = "strata image migrate abort tank/vols/disk0",
        ["image migrate status"] = "strata image migrate status tank/vols/disk0",
        ["image migrate remove-alias"] = "strata image migrate remove-alias fast/vols/disk0",
        ["engine counters"] = "strata engine counters --count 3",
        ["completion"] = "strata completion bash > /etc/bash_completion.d/strata",
    };

    /// <summary>Appends each command's example to its description; a command without one is left as it is (a test lists them).</summary>
    public static void Apply(RootCommand root)
    {
        foreach (var cmd in CommandTree.Descendants(root))
        {
            string path = CommandTree.PathOf(cmd)["strata ".Length..];
            if (ByCommand.TryGetValue(path, out var example))
                cmd.Description = $"{cmd.Description}\nExample: {example}";
        }
    }
}
