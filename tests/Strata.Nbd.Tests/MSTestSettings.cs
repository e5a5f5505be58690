[assembly: System.Runtime.Versioning.SupportedOSPlatform("linux")]

// Test classes run in parallel (two at a time: the machine has two cores); each class owns its engine and temp dir.
[assembly: Parallelize(Workers = 2, Scope = ExecutionScope.ClassLevel)]
