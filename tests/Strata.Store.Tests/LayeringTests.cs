using System.Reflection;
using System.Reflection.Emit;
using Strata.Engine.Layout;

namespace Strata.Store.Tests;

/// <summary>
/// The engine's folders depend one way (docs/architecture.md). These rules are checked on the
/// compiled assembly: every type a namespace's types name in their signatures, fields, locals
/// and method bodies (IL operands, lambdas and async state machines included).
/// </summary>
[TestClass]
public sealed class LayeringTests
{
    private const string Engine = "Strata.Engine.";

    /// <summary>Namespace, namespace it must not reference, why.</summary>
    public static IEnumerable<object[]> Rules =>
    [
        ["Layout", "Pools", "Layout sits below the pool service: actions see the pool as IUpgradePool, Pool runs the job"],
        ["Layout", "Store", "the catalog and actions do not reach the log or chunk I/O directly"],
        ["Layout", "Nbd", "the catalog knows nothing of the NBD server"],
        ["Layout", "Migration", "the catalog declares features by name; Migration.UpgradeActionBindings binds the data-moving actions"],
        ["Nbd", "Control", "the NBD server reaches images through IImageIo, not Control's MeteredImage"],
        ["Device", "Store", "the device layer is below the store"],
        ["Device", "Pools", "the device layer is below the pool service"],
    ];

    [TestMethod]
    [DynamicData(nameof(Rules))]
    public void Namespace_References_OnlyLayersBelowIt(string from, string forbidden, string why)
    {
        var asm = typeof(LayoutCatalog).Assembly;
        var found = asm.GetTypes()
            .Where(t => t.Namespace == Engine + from)
            .SelectMany(t => References(t).Where(r => r.Namespace == Engine + forbidden).Select(r => $"{t.FullName} -> {r.FullName}"))
            .Distinct()
            .Order(StringComparer.Ordinal)
            .ToList();
        Assert.IsTrue(asm.GetTypes().Any(t => t.Namespace == Engine + from), $"no type in {Engine}{from}: the rule checks nothing");
        Assert.AreEqual(0, found.Count, $"{from} must not reference {forbidden} ({why}):\n{string.Join("\n", found)}");
    }

    /// <summary>The checker sees references made only inside method bodies, which signatures do not show.</summary>
    [TestMethod]
    public void References_MethodBodyOnly_Found()
    {
        var refs = References(typeof(BodyOnly)).ToList();
        CollectionAssert.Contains(refs, typeof(System.Text.StringBuilder), "a constructor call in a body");
        CollectionAssert.Contains(refs, typeof(Uri), "a static call inside a lambda");
    }

    private static class BodyOnly
    {
        public static int Length(string s)
        {
            Func<string, bool> f = x => Uri.IsWellFormedUriString(x, UriKind.Absolute);
            return new System.Text.StringBuilder(s).Length + (f(s) ? 1 : 0);
        }
    }

    private const BindingFlags All = BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly;

    private static readonly Dictionary<short, OpCode> OpCodesByValue = typeof(OpCodes)
        .GetFields(BindingFlags.Public | BindingFlags.Static)
        .Select(f => (OpCode)f.GetValue(null)!)
        .ToDictionary(o => o.Value);

    /// <summary>Every type <paramref name="t"/> and its nested types (lambdas' closures, state machines) name.</summary>
    private static IEnumerable<Type> References(Type t)
    {
        var seen = new HashSet<Type>();
        foreach (var n in Nested(t))
            foreach (var r in Direct(n))
                foreach (var x in Expand(r))
                    if (seen.Add(x))
                        yield return x;
    }

    private static IEnumerable<Type> Nested(Type t) => t.GetNestedTypes(All).SelectMany(Nested).Prepend(t);

    private static IEnumerable<Type> Direct(Type t)
    {
        if (t.BaseType != null)
            yield return t.BaseType;
        foreach (var i in t.GetInterfaces())
            yield return i;
        foreach (var f in t.GetFields(All))
            yield return f.FieldType;
        foreach (var p in t.GetProperties(All))
            yield return p.PropertyType;
        foreach (var m in t.GetMethods(All).Cast<MethodBase>().Concat(t.GetConstructors(All)))
        {
            if (m is MethodInfo mi)
                yield return mi.ReturnType;
            foreach (var p in m.GetParameters())
                yield return p.ParameterType;
            foreach (var r in BodyReferences(t, m))
                yield return r;
        }
    }

    private static IEnumerable<Type> BodyReferences(Type t, MethodBase m)
    {
        var body = m.GetMethodBody();
        if (body == null)
            yield break;
        foreach (var l in body.LocalVariables)
            yield return l.LocalType;
        var il = body.GetILAsByteArray() ?? [];
        var typeArgs = t.IsGenericType ? t.GetGenericArguments() : null;
        var methodArgs = m.IsGenericMethod ? m.GetGenericArguments() : null;
        for (int i = 0; i < il.Length;)
        {
            short value = il[i] == 0xFE ? (short)(0xFE00 | il[i + 1]) : il[i];
            i += il[i] == 0xFE ? 2 : 1;
            var op = OpCodesByValue[value];
            switch (op.OperandType)
            {
                case OperandType.InlineField or OperandType.InlineMethod or OperandType.InlineType or OperandType.InlineTok:
                    var member = m.Module.ResolveMember(BitConverter.ToInt32(il, i), typeArgs, methodArgs);
                    switch (member)
                    {
                        case Type rt:
                            yield return rt;
                            break;
                        case FieldInfo f:
                            yield return f.DeclaringType!;
                            yield return f.FieldType;
                            break;
                        case MethodBase mb:
                            if (mb.DeclaringType != null)
                                yield return mb.DeclaringType;
                            if (mb is MethodInfo rmi)
                            {
                                yield return rmi.ReturnType;
                                foreach (var g in rmi.IsGenericMethod ? rmi.GetGenericArguments() : Type.EmptyTypes)
                                    yield return g;
                            }
                            foreach (var p in mb.GetParameters())
                                yield return p.ParameterType;
                            break;
                    }
                    i += 4;
                    break;
                case OperandType.InlineSwitch:
                    i += 4 + 4 * BitConverter.ToInt32(il, i);
                    break;
                case OperandType.InlineNone:
                    break;
                case OperandType.ShortInlineBrTarget or OperandType.ShortInlineI or OperandType.ShortInlineVar:
                    i += 1;
                    break;
                case OperandType.InlineVar:
                    i += 2;
                    break;
                case OperandType.InlineI8 or OperandType.InlineR:
                    i += 8;
                    break;
                default:
                    i += 4;
                    break;
            }
        }
    }

    /// <summary>A type and what it is made of: element types of arrays and by-refs, generic arguments.</summary>
    private static IEnumerable<Type> Expand(Type t)
    {
        if (t.IsGenericParameter)
            yield break;
        yield return t;
        if (t.HasElementType)
            foreach (var e in Expand(t.GetElementType()!))
                yield return e;
        if (t.IsGenericType)
            foreach (var a in t.GetGenericArguments())
                foreach (var e in Expand(a))
                    yield return e;
    }
}
