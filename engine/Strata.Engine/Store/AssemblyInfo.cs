using System.Runtime.CompilerServices;

// The store's white-box tests (CrashDisk, format fixtures) live in their own project.
[assembly: InternalsVisibleTo("Strata.Store.Tests")]
