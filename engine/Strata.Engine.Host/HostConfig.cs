using Strata.Engine.Nbd;
using YamlDotNet.Serialization;
using YamlDotNet.Serialization.NamingConventions;

namespace Strata.Engine.Host;

/// <summary>
/// strata-engine's YAML configuration (snake_case keys). Without a file the embedded
/// default applies: two sparse file targets under the data directory, the socket in
/// DATA_DIR/run, the RAS log in DATA_DIR/ras. See docs/operations.md.
/// </summary>
public sealed class HostConfig
{
    /// <summary>Directory of the embedded default's files; relative paths below resolve against it.</summary>
    public string? DataDir { get; set; }

    /// <summary>Device URIs (strata_io.h), e.g. file:/srv/t0.img?create=1&amp;size=64G or nvme-pcie://0000:01:00.0.</summary>
    public List<string> Targets { get; set; } = new();

    public ControlConfig Control { get; set; } = new();

    /// <summary>
    /// NBD listeners: each unix:PATH (relative to the data dir) or tcp:HOST:PORT, or a mapping with
    /// `listen:` and the listener's TLS settings (<see cref="NbdListenerConfig"/>). TCP on an address
    /// other than loopback needs `tls: require`. See docs/nbd.md.
    /// Left out, the engine serves <see cref="DefaultNbd"/> (run/nbd.sock), so images are usable with no
    /// configuration file; `nbd: []` serves none.
    /// </summary>
    public List<NbdListenerConfig>? Nbd { get; set; }

    public const string DefaultNbd = "unix:run/nbd.sock";

    /// <summary>
    /// writeback (default): NBD writes without FUA are durable at the client's next FLUSH, like a disk's
    /// write cache; writethrough: every NBD write is durable when answered. See docs/nbd.md.
    /// </summary>
    public string NbdWriteCache { get; set; } = "writeback";

    /// <summary>MiB of NBD payload in flight over all connections (at least the 32 MiB maximum payload). See docs/nbd.md.</summary>
    public int NbdInFlightMib { get; set; } = 256;

    /// <summary>MiB of NBD payload in flight on one connection (a single request is always admitted). See docs/nbd.md.</summary>
    public int NbdConnectionInFlightMib { get; set; } = 64;

    public RasConfig Ras { get; set; } = new();

    public MetricsConfig Metrics { get; set; } = new();

    public string? PidFile { get; set; }

    /// <summary>SPDK environment for nvme-tcp:/nvme-pcie: targets (docs/spdk.md); ignored without such targets.</summary>
    public SpdkConfig Spdk { get; set; } = new();

    public sealed class ControlConfig
    {
        /// <summary>Directory of the socket, created mode 0750 (owner: the engine's user, group: admin_group).</summary>
        public string? SocketDir { get; set; }

        public string SocketName { get; set; } = "strata.sock";

        /// <summary>Members of this group may use the control API besides root and the engine's user.</summary>
        public string? AdminGroup { get; set; }

        public int HeaderTimeoutSeconds { get; set; } = 10;

        public int MaxConnections { get; set; } = 64;
    }

    public sealed class RasConfig
    {
        public string? Path { get; set; }

        public long MaxBytes { get; set; } = 16 << 20;

        public int Keep { get; set; } = 4;
    }

    public sealed class MetricsConfig
    {
        /// <summary>Loopback TCP port serving only /metrics; 0 disables it (/metrics is always on the socket).</summary>
        public int PrometheusPort { get; set; }
    }

    public sealed class SpdkConfig
    {
        /// <summary>Hugepages for DMA memory; false runs on ordinary memory (NVMe-oF only, IOVA va).</summary>
        public bool Hugepages { get; set; } = true;

        /// <summary>Memory reserved for DMA buffers and queues; 0 for SPDK's default.</summary>
        public int MemSizeMb { get; set; }

        /// <summary>va or pa; unset lets DPDK choose.</summary>
        public string? IovaMode { get; set; }

        /// <summary>Hexadecimal CPU mask of the environment (SPDK's default 0x1); when set, NVMe targets' pollers run on these CPUs.</summary>
        public string? CoreMask { get; set; }

        /// <summary>Scan the PCI bus (nvme-pcie targets need it; false for NVMe-oF only).</summary>
        public bool Pci { get; set; } = true;

        public Strata.Engine.Device.SpdkEnvOptions ToEnvOptions() =>
            MemSizeMb < 0
                ? throw new ConfigException($"spdk.mem_size_mb {MemSizeMb} is negative")
                : new() { Hugepages = Hugepages, MemSizeMb = MemSizeMb, IovaMode = IovaMode, CoreMask = CoreMask, Pci = Pci };
    }

    public const string DefaultTargetSize = "4G";

    public static HostConfig Load(string path)
    {
        var deserializer = new DeserializerBuilder().WithNamingConvention(UnderscoredNamingConvention.Instance)
            .WithTypeConverter(new NbdListenerConfig.Converter()).Build();
        try
        {
            return deserializer.Deserialize<HostConfig>(File.ReadAllText(path)) ?? new HostConfig();
        }
        catch (YamlDotNet.Core.YamlException e)
        {
            throw new ConfigException($"{path} line {e.Start.Line}, column {e.Start.Column}: {e.Message}");
        }
    }

    /// <summary>Fills what the file left out from the embedded default and makes every path absolute.</summary>
    public ResolvedConfig Resolve(string? dataDirOverride, string? configFile)
    {
        string dataDir = Path.GetFullPath(dataDirOverride ?? DataDir ?? Path.Combine(Environment.CurrentDirectory, "strata-data"));
        string Abs(string p) => Path.GetFullPath(Path.IsPathRooted(p) ? p : Path.Combine(dataDir, p));
        var targets = Targets.Count > 0
            ? Targets.ToList()
            : Enumerable.Range(0, 2).Select(i => $"file:{Path.Combine(dataDir, $"target{i}.img")}?create=1&size={DefaultTargetSize}").ToList();
        if (Control.HeaderTimeoutSeconds < 1 || Control.MaxConnections < 1)
            throw new ConfigException("control.header_timeout_seconds and control.max_connections must be positive");
        if (Metrics.PrometheusPort is < 0 or > 65535)
            throw new ConfigException($"metrics.prometheus_port {Metrics.PrometheusPort} is not a TCP port");
        string socketDir = Abs(Control.SocketDir ?? "run");
        var nbd = new List<NbdListenerAddress>();
        foreach (var listener in Nbd ?? [new NbdListenerConfig { Listen = DefaultNbd }])
        {
            try
            {
                nbd.Add(listener.Resolve(dataDir));
            }
            catch (FormatException e)
            {
                throw new ConfigException(e.Message);
            }
        }
        if (NbdWriteCache is not ("writeback" or "writethrough"))
            throw new ConfigException($"nbd_write_cache '{NbdWriteCache}' is not writeback or writethrough");
        const int MaxPayloadMib = 32, MaxMib = 1 << 20;
        if (NbdInFlightMib is < MaxPayloadMib or > MaxMib)
            throw new ConfigException($"nbd_in_flight_mib {NbdInFlightMib} is outside {MaxPayloadMib}..{MaxMib} (it must hold the largest NBD payload, {MaxPayloadMib} MiB)");
        if (NbdConnectionInFlightMib < 1 || NbdConnectionInFlightMib > NbdInFlightMib)
            throw new ConfigException($"nbd_connection_in_flight_mib {NbdConnectionInFlightMib} is outside 1..{NbdInFlightMib} (nbd_in_flight_mib)");
        foreach (var dup in nbd.GroupBy(a => a.UnixPath ?? a.Tcp!.ToString()).Where(g => g.Count() > 1 && !g.Key.EndsWith(":0", StringComparison.Ordinal)))
            throw new ConfigException($"nbd listener {dup.Key} is configured {dup.Count()} times");
        return new ResolvedConfig(
            DataDir: dataDir,
            ConfigFile: configFile == null ? null : Path.GetFullPath(configFile),
            Targets: targets,
            SocketDir: socketDir,
            SocketPath: Path.Combine(socketDir, Control.SocketName),
            AdminGroup: Control.AdminGroup,
            HeaderTimeout: TimeSpan.FromSeconds(Control.HeaderTimeoutSeconds),
            MaxConnections: Control.MaxConnections,
            RasPath: Abs(Ras.Path ?? Path.Combine("ras", "events.jsonl")),
            RasMaxBytes: Ras.MaxBytes,
            RasKeep: Ras.Keep,
            PrometheusPort: Metrics.PrometheusPort,
            PidFile: Abs(PidFile ?? Path.Combine("run", "strata-engine.pid")),
            Nbd: nbd)
        {
            Spdk = Spdk.ToEnvOptions(),
            NbdWriteCache = NbdWriteCache == "writeback",
            NbdInFlightBytes = (long)NbdInFlightMib << 20,
            NbdConnectionInFlightBytes = (long)NbdConnectionInFlightMib << 20,
        };
    }
}

public sealed record ResolvedConfig(string DataDir, string? ConfigFile, List<string> Targets, string SocketDir, string SocketPath,
    string? AdminGroup, TimeSpan HeaderTimeout, int MaxConnections, string RasPath, long RasMaxBytes, int RasKeep,
    int PrometheusPort, string PidFile, IReadOnlyList<NbdListenerAddress> Nbd)
{
    /// <summary>Passed to the shim before the first nvme-* target opens.</summary>
    public Strata.Engine.Device.SpdkEnvOptions Spdk { get; init; } = new();

    /// <summary>NBD writes without FUA are writeback (NbdServerOptions.WriteCache).</summary>
    public bool NbdWriteCache { get; init; } = true;

    /// <summary>NbdServerOptions.MaxInFlightBytesTotal.</summary>
    public long NbdInFlightBytes { get; init; } = 256L << 20;

    /// <summary>NbdServerOptions.MaxInFlightBytes.</summary>
    public long NbdConnectionInFlightBytes { get; init; } = 64L << 20;
}

/// <summary>A startup refusal an operator can fix (bad config, a live engine on the socket, a symlink): one line, exit 1.</summary>
public sealed class ConfigException(string message) : Exception(message);
