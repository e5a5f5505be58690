// Test classes run in parallel; each test owns its devices and temp files.
[assembly: Parallelize(Workers = 2, Scope = ExecutionScope.ClassLevel)]
