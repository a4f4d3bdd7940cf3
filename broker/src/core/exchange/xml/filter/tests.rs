//! The compiled filter against the XPath engine: generated queries inside the subset and
//! generated documents must get the same answer from both, singly and through the index.

use std::sync::Arc;

use proptest::prelude::*;

use super::super::pool::engine_says;
use super::super::prolog;
use super::{Doc, Filter, FilterSet};
use crate::core::message::{Draft, Message};
use crate::wire::{FieldTable, MessageProperties, Value};

const NS: &str = "urn:x";
const DEFAULT_NS: &str = "urn:d";

/// An element of a generated document.
#[derive(Debug, Clone)]
struct El {
    prefixed: bool,
    name: &'static str,
    attrs: Vec<(&'static str, &'static str)>,
    children: Vec<Child>,
}

#[derive(Debug, Clone)]
enum Child {
    El(El),
    Text(&'static str),
}

const NAMES: [&str; 3] = ["a", "b", "c"];
const VALUES: [&str; 14] = [
    "1", "2", "x", "10", " 2 ", "", "true", "2.5", " true ", "INF", "NaN", "-0", "1e", "\u{a0}5",
];

fn element() -> impl Strategy<Value = El> {
    let leaf = (
        any::<bool>(),
        prop::sample::select(&NAMES[..]),
        prop::collection::vec(
            (
                prop::sample::select(&["id", "k"][..]),
                prop::sample::select(&VALUES[..]),
            ),
            0..2,
        ),
        prop::option::of(prop::sample::select(&VALUES[..])),
    )
        .prop_map(|(prefixed, name, mut attrs, text)| {
            attrs.dedup_by_key(|a| a.0);
            El {
                prefixed,
                name,
                attrs,
                children: text.map(Child::Text).into_iter().collect(),
            }
        });
    leaf.prop_recursive(4, 24, 4, |inner| {
        (
            any::<bool>(),
            prop::sample::select(&NAMES[..]),
            prop::collection::vec(
                prop_oneof![
                    3 => inner.prop_map(Child::El),
                    1 => prop::sample::select(&VALUES[..]).prop_map(Child::Text),
                ],
                0..4,
            ),
        )
            .prop_map(|(prefixed, name, children)| El {
                prefixed,
                name,
                attrs: Vec::new(),
                children,
            })
    })
}

fn write(el: &El, root: Option<bool>, out: &mut String) {
    let name = if el.prefixed {
        format!("p:{}", el.name)
    } else {
        el.name.to_string()
    };
    out.push('<');
    out.push_str(&name);
    if let Some(default_ns) = root {
        out.push_str(&format!(" xmlns:p=\"{NS}\""));
        if default_ns {
            out.push_str(&format!(" xmlns=\"{DEFAULT_NS}\""));
        }
    }
    for (k, v) in &el.attrs {
        out.push_str(&format!(" {k}=\"{v}\""));
    }
    out.push('>');
    for c in &el.children {
        match c {
            Child::El(e) => write(e, None, out),
            Child::Text(t) => out.push_str(t),
        }
    }
    out.push_str(&format!("</{name}>"));
}

fn name_test() -> impl Strategy<Value = String> {
    prop::sample::select(&["a", "b", "c", "p:a", "p:b", "*"][..]).prop_map(str::to_string)
}

/// A relative path of one to three steps, maybe with predicates, maybe ending at an
/// attribute.
fn relative(pred: BoxedStrategy<String>) -> impl Strategy<Value = String> {
    (
        prop::collection::vec(
            (
                prop::sample::select(&["/", "//"][..]),
                name_test(),
                prop::option::weighted(0.25, pred),
            ),
            1..4,
        ),
        prop::option::weighted(0.3, prop::sample::select(&["@id", "@k", "@*"][..])),
    )
        .prop_map(|(steps, attr)| {
            let mut s = String::new();
            for (i, (sep, test, pred)) in steps.into_iter().enumerate() {
                if i > 0 {
                    s.push_str(sep);
                }
                s.push_str(&test);
                if let Some(p) = pred {
                    s.push_str(&format!("[{p}]"));
                }
            }
            if let Some(a) = attr {
                s.push('/');
                s.push_str(a);
            }
            s
        })
}

fn literal() -> impl Strategy<Value = String> {
    prop::sample::select(
        &[
            "'1'", "'2'", "'x'", "'10'", "''", "1", "2", "10", "2.5", "$h",
        ][..],
    )
    .prop_map(str::to_string)
}

fn op() -> impl Strategy<Value = String> {
    prop::sample::select(&["=", "!=", "<", "<=", ">", ">="][..]).prop_map(str::to_string)
}

/// A boolean expression of the subset, over paths relative to its context.
fn boolean() -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        Just("true()".to_string()),
        Just("false()".to_string()),
        prop::sample::select(&["a", "p:a", "b", "*", "@id", "."][..]).prop_map(str::to_string),
    ];
    leaf.prop_recursive(3, 16, 3, |inner| {
        let path = relative(inner.clone()).boxed();
        prop_oneof![
            path.clone(),
            (path.clone(), op(), literal()).prop_map(|(p, o, l)| format!("{p} {o} {l}")),
            (literal(), op(), path.clone()).prop_map(|(l, o, p)| format!("{l} {o} {p}")),
            (path.clone(), op(), path.clone()).prop_map(|(a, o, b)| format!("{a} {o} {b}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) and ({b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) or ({b})")),
            inner.clone().prop_map(|a| format!("not({a})")),
            path.clone().prop_map(|p| format!("exists({p})")),
            path.clone().prop_map(|p| format!("empty({p})")),
            (
                prop::sample::select(&["contains", "starts-with", "ends-with"][..]),
                path.clone(),
                prop::sample::select(&["'1'", "'x'", "''", "$h"][..]),
            )
                .prop_map(|(f, p, l)| format!("{f}({p}, {l})")),
            (inner.clone(), name_test())
                .prop_map(|(b, t)| format!("let $v := ./{t} return $v[{b}]")),
        ]
    })
    .boxed()
}

/// A whole query: a boolean expression from the document, or a path from the root.
fn query() -> impl Strategy<Value = String> {
    prop_oneof![
        boolean(),
        (
            prop::sample::select(&["/", "//", "./"][..]),
            relative(boolean())
        )
            .prop_map(|(start, p)| format!("{start}{p}")),
    ]
    .prop_flat_map(|expr| {
        any::<bool>().prop_map(move |default_ns| {
            let default = if default_ns {
                format!("declare default element namespace '{DEFAULT_NS}'; ")
            } else {
                String::new()
            };
            format!("declare namespace p = '{NS}'; {default}declare variable $h external; {expr}")
        })
    })
}

fn header() -> impl Strategy<Value = Option<Value>> {
    prop::option::of(prop_oneof![
        Just(Value::Str16("2".into())),
        Just(Value::Str16("x".into())),
        Just(Value::Int64(2)),
        Just(Value::Double(2.5)),
        Just(Value::Bool(true)),
    ])
}

fn message(body: &str, h: Option<Value>) -> Message {
    let mut d = Draft::new("k", body.to_string());
    if let Some(v) = h {
        let mut t = FieldTable::new();
        t.insert("h", v);
        d.set_properties(MessageProperties {
            application_headers: Some(t),
            ..MessageProperties::default()
        });
    }
    d.seal()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn compiled_filters_answer_as_the_engine(
        el in element(),
        default_ns in any::<bool>(),
        queries in prop::collection::vec(query(), 1..6),
        h in header(),
    ) {
        let mut body = String::new();
        write(&el, Some(default_ns), &mut body);
        let msg = message(&body, h);
        let doc = Doc::parse(msg.body.as_ref()).expect("a generated document is read");
        let mut set = FilterSet::default();
        let mut expected = Vec::new();
        for (i, text) in queries.iter().enumerate() {
            let q = prolog::parse(text).expect("prolog");
            // Queries the engine refuses are refused at bind time: nothing to compare.
            if super::super::pool::check(Arc::new(q.clone())).is_err() {
                continue;
            }
            let Some(f) = Filter::compile(&q) else {
                // The generator stays inside the subset.
                prop_assert!(false, "not compiled: {text}");
                continue;
            };
            let engine = engine_says(&q, &msg);
            prop_assert_eq!(
                f.matches(&doc, msg.headers()),
                engine,
                "query {} over {} with headers {:?}",
                text,
                body,
                msg.headers()
            );
            let id = i as u64 + 1;
            set.add(id, f);
            if engine {
                expected.push(id);
            }
        }
        prop_assert_eq!(set.matches(&doc, msg.headers(), |_| true), expected, "through the index, over {}", body);
    }
}

/// Pieces inserted into generated bodies: what a light parser may take where the engine's
/// does not, or read differently.
const MUTATIONS: [&str; 16] = [
    "<",
    ">",
    "&",
    "&amp;",
    "&#32;",
    "]]>",
    "<!--a-->",
    "<!--a--->",
    "<?p x?>",
    "\n",
    "\t",
    "\"",
    " x='1'",
    "<?xml version='1.0'?>",
    "\u{a0}",
    "<![CDATA[x]]>",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn bodies_the_light_parse_takes_the_engine_takes_and_reads_alike(
        el in element(),
        cuts in prop::collection::vec((any::<prop::sample::Index>(), prop::sample::select(&MUTATIONS[..])), 1..3),
        queries in prop::collection::vec(query(), 1..4),
    ) {
        let mut body = String::new();
        write(&el, Some(false), &mut body);
        for (at, piece) in cuts {
            let mut i = at.index(body.len() + 1);
            while !body.is_char_boundary(i) {
                i -= 1;
            }
            body.insert_str(i, piece);
        }
        let msg = message(&body, None);
        let Some(doc) = Doc::parse(msg.body.as_ref()) else {
            return Ok(());
        };
        let any = prolog::parse(".").expect("prolog");
        prop_assert!(engine_says(&any, &msg), "taken here, refused by the engine: {}", body);
        for text in &queries {
            let q = prolog::parse(text).expect("prolog");
            if super::super::pool::check(Arc::new(q.clone())).is_err() {
                continue;
            }
            if let Some(f) = Filter::compile(&q) {
                prop_assert_eq!(f.matches(&doc, None), engine_says(&q, &msg), "query {} over {}", text, body);
            }
        }
    }
}

#[test]
fn what_falls_back_to_the_engine() {
    for text in [
        "./a - ./b > 5",
        "for $x in ./a return $x",
        "./a[1]",
        "count(./a) > 1",
        "./a/text()",
        "../a",
        "if (./a) then true() else false()",
        "./a/child::b",
        "$undeclared = 1",
        // A `let` path used inside a later predicate starts from another context item.
        "let $r := ./r return ./r/b[$r/c = '1']",
        // The engine evaluates a `let` path at once, errors and all.
        "let $v := ./r[*] return ./r",
        // Would double at each level if paths were copied into predicates.
        "let $a := ./x return let $b := $a[$a] return let $c := $b[$b] return $c",
    ] {
        let q = prolog::parse(text).expect("prolog");
        assert!(Filter::compile(&q).is_none(), "{text} compiled");
    }
    for text in [
        "declare namespace f = 'urn:f'; let $e := ./f:Event return $e/f:NodeStatus[f:Node = 'n1'] or $e/f:NodeLeave",
        "//a[@id = '1' and not(b)]/c",
        "declare variable $v external; ./a = $v",
    ] {
        let q = prolog::parse(text).expect("prolog");
        assert!(Filter::compile(&q).is_some(), "{text} not compiled");
    }
}

#[test]
fn bodies_the_light_parse_leaves_to_the_engine() {
    for body in [
        "<a>",
        "<a></b>",
        "<a/><b/>",
        "text<a/>",
        "<!DOCTYPE a><a/>",
        "<a>&unknown;</a>",
        "<q:a/>",
        "<a x='1' x='2'/>",
        "<a>\u{1}</a>",
        "",
        "\n<?xml version='1.0'?><a/>",
        "<?xml version='1.1'?><a/>",
        "<a>x\r\ny</a>",
        "<a>]]></a>",
        "<!--a--b--><a/>",
        "<a x='1'y='2'/>",
        "<a x='1\t2'/>",
        "<\u{b5}/>",
        "&#32;<a/>",
        "<a xml:id='x'/>",
    ] {
        assert!(Doc::parse(body.as_bytes()).is_none(), "{body:?} was read");
    }
    assert!(
        Doc::parse(b"<?xml version='1.0'?><!-- c --><a b='&lt;'>x<![CDATA[<y>]]></a>").is_some()
    );
}

#[test]
fn the_index_forgets_removed_bindings() {
    let ns = "declare namespace f = 'urn:f'; let $e := ./f:E return ";
    let filter = |q: &str| {
        Filter::compile(&prolog::parse(&format!("{ns}{q}")).expect("prolog")).expect("compiled")
    };
    let mut set = FilterSet::default();
    set.add(1, filter("$e/f:S[f:N = 'n1']"));
    set.add(2, filter("$e/f:S[f:N = 'n1']"));
    set.add(3, filter("$e/f:S[f:N = 'n2']"));
    set.add(4, filter("$e/f:S or $e/f:L"));
    let doc = Doc::parse(b"<E xmlns='urn:f'><S><N>n1</N></S></E>").expect("doc");
    assert_eq!(set.matches(&doc, None, |_| true), [1, 2, 4]);
    assert_eq!(set.matches(&doc, None, |id| id != 2), [1, 4]);
    set.remove(1);
    set.remove(4);
    assert!(!set.contains(1));
    assert_eq!(set.matches(&doc, None, |_| true), [2]);
    set.remove(2);
    set.remove(3);
    assert_eq!(set.matches(&doc, None, |_| true), Vec::<u64>::new());
}
