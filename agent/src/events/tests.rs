use std::fs;

use super::*;
use crate::registry::CommandType;

fn core() -> SchemaSet {
    SchemaSet::load(None).expect("built-in schemas load")
}

fn ev(inner: &str) -> String {
    format!("<Event xmlns=\"{EVENTS_NS}\">{inner}</Event>")
}

/// The error text of a refused event.
fn refused(set: &SchemaSet, xml: &str) -> String {
    match set.validate(xml) {
        Ok(v) => panic!("accepted {} but should not: {xml}", v.name),
        Err(e) => e.to_string(),
    }
}

fn method(name: &str) -> NodeMethod {
    NodeMethod {
        name: name.into(),
        path: format!("CommandRegistry.{name}"),
        target: "core".into(),
        signature: vec!["queue".into(), "locale".into()],
        kind: CommandType::Normal,
        queue_required: true,
        documentation: "List <methods> & \"things\"".into(),
    }
}

const STATUS_OK: &str =
    "<NodeStatus><Id>n1</Id><Load>0.07</Load><Latency>0</Latency><Workers>6</Workers><Indexed>true</Indexed></NodeStatus>";

#[test]
fn core_schemas_load_with_the_four_core_events() {
    let set = core();
    let names: Vec<&str> = set.event_names().collect();
    assert_eq!(
        names,
        [
            "NodeAnnounce",
            "NodeCapabilities",
            "NodeLeave",
            "NodeStatus"
        ]
    );
    assert!(set.ignored().is_empty());
}

#[test]
fn built_node_announce_and_leave_validate() {
    let set = core();
    let a = set.validate(&node_announce("node<1>&")).unwrap();
    assert_eq!(a.name, "NodeAnnounce");
    assert_eq!(a.id.as_deref(), Some("node<1>&"));
    let l = set.validate(&node_leave("node1")).unwrap();
    assert_eq!(l.name, "NodeLeave");
    assert_eq!(l.id.as_deref(), Some("node1"));
}

#[test]
fn built_node_status_validates_and_carries_its_values() {
    let set = core();
    let xml = node_status("node1", 0.0712, 0.0, 6, Some(true));
    let v = set.validate(&xml).unwrap();
    assert_eq!(v.name, "NodeStatus");
    assert_eq!(
        v.element.child("Load").map(|e| e.text()),
        Some("0.07".into())
    );
    assert_eq!(
        v.element.child("Latency").map(|e| e.text()),
        Some("0".into())
    );
    assert_eq!(
        v.element.child("Workers").map(|e| e.text()),
        Some("6".into())
    );
    assert_eq!(
        v.element.child("Indexed").map(|e| e.text()),
        Some("true".into())
    );
    // Optional Indexed left out, and non-finite numbers still give a valid event.
    let v = set
        .validate(&node_status("n", f64::NAN, f64::INFINITY, u32::MAX, None))
        .unwrap();
    assert!(v.element.child("Indexed").is_none());
    assert_eq!(
        v.element.child("Workers").map(|e| e.text()),
        Some(i32::MAX.to_string())
    );
}

#[test]
fn built_node_capabilities_validates_and_escapes() {
    let set = core();
    let objects = [
        NodeObject {
            oid: "User".into(),
            signature: None,
        },
        NodeObject {
            oid: "Group".into(),
            signature: Some("a,b".into()),
        },
    ];
    let mut cumulative = method("collect");
    cumulative.kind = CommandType::Cumulative;
    cumulative.signature.clear();
    cumulative.documentation = "line\r\nbreak\u{1}".into();
    let xml = node_capabilities("node1", &[method("getMethods"), cumulative], &objects);
    let v = set.validate(&xml).unwrap();
    assert_eq!(v.name, "NodeCapabilities");
    let methods: Vec<&Element> = v
        .element
        .elements()
        .filter(|e| e.local_name() == "NodeMethod")
        .collect();
    assert_eq!(methods.len(), 2);
    assert_eq!(
        methods[0].child("Documentation").map(|e| e.text()),
        Some("List <methods> & \"things\"".into())
    );
    assert_eq!(
        methods[0].child("Signature").map(|e| e.text()),
        Some("queue,locale".into())
    );
    assert_eq!(
        methods[1].child("Type").map(|e| e.text()),
        Some("CUMMULATIVE".into())
    );
    assert_eq!(
        methods[1].child("Signature").map(|e| e.text()),
        Some(String::new())
    );
    assert_eq!(
        methods[1].child("Documentation").map(|e| e.text()),
        Some("line\r\nbreak\u{FFFD}".into())
    );
    assert_eq!(
        v.element
            .elements()
            .filter(|e| e.local_name() == "NodeObject")
            .count(),
        2
    );
    // Capabilities without any method or object are valid too.
    assert!(set.validate(&node_capabilities("n", &[], &[])).is_ok());
}

#[test]
fn method_type_spellings() {
    assert_eq!(
        CommandType::from_wire("CUMULATIVE"),
        Some(CommandType::Cumulative)
    );
    assert_eq!(
        CommandType::from_wire(CommandType::Cumulative.wire_name()),
        Some(CommandType::Cumulative)
    );
    assert_eq!(CommandType::from_wire("normal"), None);
}

#[test]
fn node_status_children_in_any_order() {
    let set = core();
    let xml = ev("<NodeStatus><Workers>6</Workers><Id>n1</Id><Latency>0</Latency><Load> 1.5E-1 </Load></NodeStatus>");
    assert_eq!(set.validate(&xml).unwrap().name, "NodeStatus");
    assert!(set.validate(&ev(STATUS_OK)).is_ok());
}

#[test]
fn node_status_bad_values_name_the_field_and_type() {
    let set = core();
    let bad = STATUS_OK.replace("0.07", "abc");
    assert_eq!(
        refused(&set, &ev(&bad)),
        "NodeStatus/Load: 'abc' is not a valid xs:float"
    );
    let bad = STATUS_OK.replace(">6<", ">6.5<");
    assert_eq!(
        refused(&set, &ev(&bad)),
        "NodeStatus/Workers: '6.5' is not a valid xs:int"
    );
    let bad = STATUS_OK.replace(">6<", ">99999999999<");
    assert!(refused(&set, &ev(&bad)).contains("xs:int"));
    let bad = STATUS_OK.replace("true", "yes");
    assert_eq!(
        refused(&set, &ev(&bad)),
        "NodeStatus/Indexed: 'yes' is not a valid xs:boolean"
    );
}

#[test]
fn node_status_missing_and_repeated_children() {
    let set = core();
    let missing = STATUS_OK.replace("<Latency>0</Latency>", "");
    assert_eq!(
        refused(&set, &ev(&missing)),
        "NodeStatus: missing required element Latency"
    );
    let twice = STATUS_OK.replace("<Id>n1</Id>", "<Id>n1</Id><Id>n2</Id>");
    assert!(refused(&set, &ev(&twice)).contains("element Id is out of place or occurs too often"));
    let stranger = STATUS_OK.replace("<Id>n1</Id>", "<Id>n1</Id><Cpu>1</Cpu>");
    assert!(refused(&set, &ev(&stranger)).starts_with("NodeStatus: unexpected element Cpu"));
}

#[test]
fn node_announce_occurrence_bounds() {
    let set = core();
    assert_eq!(
        refused(&set, &ev("<NodeAnnounce/>")),
        "NodeAnnounce: missing required element Id"
    );
    let two = refused(
        &set,
        &ev("<NodeAnnounce><Id>a</Id><Id>b</Id></NodeAnnounce>"),
    );
    assert!(
        two.contains("Id is out of place or occurs too often"),
        "{two}"
    );
    assert!(set
        .validate(&ev("<NodeLeave>\n  <Id>a</Id>\n</NodeLeave>"))
        .is_ok());
}

#[test]
fn node_capabilities_sequence_order_and_enumeration() {
    let set = core();
    let obj = "<NodeObject><OID>User</OID></NodeObject>";
    let m = node_capabilities("n", &[method("a")], &[]);
    let method_xml = &m[m.find("<NodeMethod>").unwrap()..m.find("</NodeMethod>").unwrap() + 13];
    // Objects after methods is the declared order; the reverse is refused.
    let good = ev(&format!(
        "<NodeCapabilities><Id>n</Id>{method_xml}{obj}</NodeCapabilities>"
    ));
    assert!(set.validate(&good).is_ok());
    let swapped = ev(&format!(
        "<NodeCapabilities><Id>n</Id>{obj}{method_xml}</NodeCapabilities>"
    ));
    let err = refused(&set, &swapped);
    assert!(
        err.starts_with("NodeCapabilities: element NodeMethod is out of place"),
        "{err}"
    );
    let no_id = ev(&format!(
        "<NodeCapabilities>{method_xml}</NodeCapabilities>"
    ));
    assert!(refused(&set, &no_id).contains("expected Id"));
    // Enumeration: the misspelling is the wire form, the right spelling is accepted, others not.
    let cum = good.replace(">NORMAL<", ">CUMULATIVE<");
    assert!(set.validate(&cum).is_ok());
    let bad = good.replace(">NORMAL<", ">SOMETIMES<");
    assert_eq!(
        refused(&set, &bad),
        "NodeCapabilities/NodeMethod/Type: 'SOMETIMES' is not one of NORMAL, FIRSTRESULT, CUMMULATIVE, CUMULATIVE (type MethodType)"
    );
    // A broken second method is reported with its index.
    let short = method_xml.replace("<QueueRequired>true</QueueRequired>", "");
    let two = ev(&format!(
        "<NodeCapabilities><Id>n</Id>{method_xml}{short}</NodeCapabilities>"
    ));
    assert_eq!(
        refused(&set, &two),
        "NodeCapabilities/NodeMethod[2]: missing required element QueueRequired"
    );
}

#[test]
fn envelope_errors() {
    let set = core();
    assert!(matches!(
        set.validate(&ev("<Nope><Id>x</Id></Nope>")),
        Err(EventError::UnknownEvent(n)) if n == "Nope"
    ));
    let two = ev("<NodeLeave><Id>a</Id></NodeLeave><NodeLeave><Id>b</Id></NodeLeave>");
    assert_eq!(
        refused(&set, &two),
        "Event: must have exactly one child element, found 2"
    );
    assert!(refused(&set, &ev("")).contains("found 0"));
    assert!(
        refused(&set, &ev("hi<NodeLeave><Id>a</Id></NodeLeave>")).contains("unexpected text 'hi'")
    );
    let wrong_ns =
        "<Event xmlns=\"http://example.net/Events\"><NodeLeave><Id>a</Id></NodeLeave></Event>";
    assert!(matches!(
        set.validate(wrong_ns),
        Err(EventError::NotAnEvent(_))
    ));
    let no_ns = "<Event><NodeLeave><Id>a</Id></NodeLeave></Event>";
    assert!(matches!(
        set.validate(no_ns),
        Err(EventError::NotAnEvent(_))
    ));
    let child_ns = ev("<NodeLeave xmlns=\"urn:other\"><Id>a</Id></NodeLeave>");
    assert!(refused(&set, &child_ns).contains("is not in namespace"));
    let inner_ns = ev("<NodeLeave><Id xmlns=\"urn:other\">a</Id></NodeLeave>");
    assert!(refused(&set, &inner_ns).contains("unexpected element {urn:other}Id"));
    let root_name =
        format!("<Events xmlns=\"{EVENTS_NS}\"><NodeLeave><Id>a</Id></NodeLeave></Events>");
    assert!(matches!(
        set.validate(&root_name),
        Err(EventError::NotAnEvent(_))
    ));
}

#[test]
fn prefixed_namespace_is_the_same_namespace() {
    let set = core();
    let xml = format!(
        "<e:Event xmlns:e=\"{EVENTS_NS}\"><e:NodeLeave><e:Id>a</e:Id></e:NodeLeave></e:Event>"
    );
    assert_eq!(set.validate(&xml).unwrap().name, "NodeLeave");
}

#[test]
fn malformed_xml_is_refused() {
    let set = core();
    for bad in [
        "",
        "not xml",
        "<Event xmlns=\"http://www.gonicus.de/Events\"><NodeLeave><Id>a</Id></NodeLeave>",
        "<Event xmlns=\"http://www.gonicus.de/Events\"><NodeLeave><Id>a</NodeLeave></Id></Event>",
        "<Event xmlns=\"http://www.gonicus.de/Events\"><NodeLeave><Id>a&bogus;</Id></NodeLeave></Event>",
        "<!DOCTYPE Event [<!ENTITY x \"y\">]><Event/>",
    ] {
        assert!(matches!(set.validate(bad), Err(EventError::Malformed(_))), "{bad:?}");
    }
}

#[test]
fn content_errors_inside_elements() {
    let set = core();
    let attr = ev("<NodeLeave><Id kind=\"x\">a</Id></NodeLeave>");
    assert_eq!(
        refused(&set, &attr),
        "NodeLeave/Id: unexpected attribute 'kind'"
    );
    let nested = ev("<NodeLeave><Id><b>a</b></Id></NodeLeave>");
    assert!(refused(&set, &nested).starts_with("NodeLeave/Id: unexpected element b"));
    let text = ev("<NodeLeave>loose<Id>a</Id></NodeLeave>");
    assert_eq!(refused(&set, &text), "NodeLeave: unexpected text 'loose'");
}

#[test]
fn size_and_depth_limits() {
    let set = core();
    let deep = format!(
        "{}{}",
        "<a>".repeat(MAX_EVENT_DEPTH + 1),
        "</a>".repeat(MAX_EVENT_DEPTH + 1)
    );
    let err = refused(&set, &ev(&deep));
    assert!(err.contains("deeper than 64"), "{err}");
    let big = ev(&format!(
        "<NodeLeave><Id>{}</Id></NodeLeave>",
        "x".repeat(MAX_EVENT_BYTES)
    ));
    assert!(refused(&set, &big).contains("larger than"));
}

#[test]
fn declaration_is_dropped_and_written_once() {
    let set = core();
    let xml = format!("<?xml version='1.0'?>\n{}\n", node_leave("n1"));
    let v = set.validate(&xml).unwrap();
    assert!(v.body.starts_with("<Event"));
    let wire = v.wire_text();
    assert!(wire.starts_with(XML_DECLARATION));
    assert_eq!(wire.matches("<?xml").count(), 1);
    assert!(set.validate(&wire).is_ok());
}

const ALARM_XSD: &str = r#"<?xml version="1.0"?>
<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:ev="http://www.gonicus.de/Events"
           targetNamespace="http://www.gonicus.de/Events" elementFormDefault="qualified">
  <xs:annotation><xs:documentation>A test event.</xs:documentation></xs:annotation>
  <xs:element name="Alarm">
    <xs:complexType>
      <xs:sequence>
        <xs:element name="Id" type="xs:token"/>
        <xs:choice>
          <xs:element name="Host" type="xs:string"/>
          <xs:sequence>
            <xs:element name="Address" type="xs:string" maxOccurs="2"/>
            <xs:element name="Port" type="ev:Port" minOccurs="0"/>
          </xs:sequence>
        </xs:choice>
        <xs:element name="Severity" type="ev:Severity"/>
        <xs:element name="Tag" minOccurs="0" maxOccurs="3">
          <xs:simpleType>
            <xs:restriction base="xs:string"><xs:maxLength value="4"/></xs:restriction>
          </xs:simpleType>
        </xs:element>
        <xs:element name="When" type="xs:dateTime" minOccurs="0"/>
        <xs:element name="Blob" type="xs:base64Binary" minOccurs="0"/>
      </xs:sequence>
    </xs:complexType>
  </xs:element>
  <xs:simpleType name="Severity">
    <xs:restriction base="xs:token">
      <xs:enumeration value="low"/>
      <xs:enumeration value="high"/>
    </xs:restriction>
  </xs:simpleType>
  <xs:simpleType name="Port">
    <xs:restriction base="xs:unsignedInt">
      <xs:minInclusive value="1"/>
      <xs:maxInclusive value="65535"/>
    </xs:restriction>
  </xs:simpleType>
</xs:schema>
"#;

fn alarm(body: &str) -> String {
    ev(&format!("<Alarm><Id>a1</Id>{body}</Alarm>"))
}

#[test]
fn directory_schema_adds_an_event_with_choice_bounds_and_facets() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("Alarm.xsd"), ALARM_XSD).unwrap();
    fs::write(dir.path().join("notes.txt"), "not a schema").unwrap();
    let set = SchemaSet::load(Some(dir.path())).unwrap();
    assert!(set.contains("Alarm"));
    assert!(set.contains("NodeStatus"));

    let valid = [
        "<Host>h</Host><Severity>low</Severity>",
        "<Address>a</Address><Severity> high </Severity>",
        "<Address>a</Address><Address>b</Address><Port>8080</Port><Severity>low</Severity>",
        "<Host>h</Host><Severity>low</Severity><Tag>ab</Tag><Tag>cd</Tag><Tag>ef</Tag>",
        "<Host>h</Host><Severity>low</Severity><When>2013-03-14T12:00:00Z</When><Blob>QUJD</Blob>",
    ];
    for body in valid {
        assert_eq!(
            set.validate(&alarm(body)).map(|v| v.name),
            Ok("Alarm".into()),
            "{body}"
        );
    }
    let invalid = [
        // choice: both branches, and neither
        ("<Host>h</Host><Address>a</Address><Severity>low</Severity>", "Alarm: element Address is out of place"),
        ("<Severity>low</Severity>", "Alarm: element Severity is out of place"),
        // occurrence bounds
        (
            "<Address>a</Address><Address>b</Address><Address>c</Address><Severity>low</Severity>",
            "Alarm: element Address is out of place or occurs too often",
        ),
        (
            "<Host>h</Host><Severity>low</Severity><Tag>a</Tag><Tag>b</Tag><Tag>c</Tag><Tag>d</Tag>",
            "Alarm: element Tag is out of place or occurs too often",
        ),
        ("<Host>h</Host>", "Alarm: missing required element Severity"),
        // enumeration, range and length facets
        ("<Host>h</Host><Severity>medium</Severity>", "Alarm/Severity: 'medium' is not one of low, high"),
        (
            "<Address>a</Address><Port>0</Port><Severity>low</Severity>",
            "Alarm/Port: '0' is out of the range of type Port",
        ),
        (
            "<Address>a</Address><Port>-3</Port><Severity>low</Severity>",
            "Alarm/Port: '-3' is not a valid xs:unsignedInt",
        ),
        (
            "<Host>h</Host><Severity>low</Severity><Tag>toolong</Tag>",
            "Alarm/Tag: 'toolong' has a length not allowed",
        ),
        (
            "<Host>h</Host><Severity>low</Severity><When>2013-03-14</When>",
            "Alarm/When: '2013-03-14' is not a valid xs:dateTime",
        ),
        (
            "<Host>h</Host><Severity>low</Severity><Blob>QUJ</Blob>",
            "Alarm/Blob: 'QUJ' is not a valid xs:base64Binary",
        ),
    ];
    for (body, want) in invalid {
        let err = refused(&set, &alarm(body));
        assert!(err.starts_with(want), "{body}: got {err:?}, want {want:?}");
    }
}

#[test]
fn directory_schema_cannot_replace_a_core_event() {
    let dir = tempfile::tempdir().unwrap();
    let loose = ALARM_XSD.replace("name=\"Alarm\"", "name=\"NodeStatus\"");
    fs::write(dir.path().join("NodeStatus.xsd"), loose).unwrap();
    let set = SchemaSet::load(Some(dir.path())).unwrap();
    assert_eq!(set.ignored().len(), 1);
    assert!(set.ignored()[0].ends_with("NodeStatus.xsd"));
    assert!(set.validate(&ev(STATUS_OK)).is_ok());
}

#[test]
fn bad_schema_file_in_directory_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("Alarm.xsd"), ALARM_XSD).unwrap();
    fs::write(dir.path().join("Broken.xsd"), "<xs:schema").unwrap();
    let err = SchemaSet::load(Some(dir.path())).unwrap_err().to_string();
    assert!(err.contains("Broken.xsd"), "{err}");
    let missing = dir.path().join("nope");
    assert!(matches!(
        SchemaSet::load(Some(&missing)),
        Err(SchemaError::Io { .. })
    ));
}

/// Loads one schema text as event `Alarm` and returns the load error.
fn load_error(xsd: &str) -> String {
    let mut set = SchemaSet::default();
    match set.add("Alarm", "Alarm.xsd", xsd) {
        Ok(()) => panic!("schema accepted: {xsd}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unsupported_or_wrong_schemas_are_refused_clearly() {
    let cases = [
        (
            ALARM_XSD.replace(
                "<xs:element name=\"When\"",
                "<xs:attribute name=\"x\" type=\"xs:string\"/><xs:element name=\"When\"",
            ),
            "xs:attribute is not supported",
        ),
        (
            ALARM_XSD.replace(
                "<xs:maxLength value=\"4\"/>",
                "<xs:pattern value=\"[a-z]+\"/>",
            ),
            "xs:pattern is not supported",
        ),
        (
            ALARM_XSD.replace("xs:dateTime", "xs:duration"),
            "built-in type 'xs:duration' is not supported",
        ),
        (
            ALARM_XSD.replace("ev:Severity\"", "ev:Nothing\""),
            "unknown type 'ev:Nothing'",
        ),
        (
            ALARM_XSD.replace(
                "targetNamespace=\"http://www.gonicus.de/Events\"",
                "targetNamespace=\"urn:x\"",
            ),
            "must be http://www.gonicus.de/Events",
        ),
        (
            ALARM_XSD.replace("name=\"Alarm\"", "name=\"Other\""),
            "neither an element nor a complex type named Alarm",
        ),
        (
            ALARM_XSD.replace("maxOccurs=\"3\"", "maxOccurs=\"lots\""),
            "is not a count",
        ),
        (
            ALARM_XSD.replace("maxOccurs=\"3\"", "maxOccurs=\"3\" nillable=\"true\""),
            "attribute 'nillable' is not supported",
        ),
        (
            ALARM_XSD.replace("<xs:complexType>", "<xs:complexType mixed=\"true\">"),
            "mixed content is not supported",
        ),
        (
            ALARM_XSD
                .replace("<xs:choice>", "<xs:all>")
                .replace("</xs:choice>", "</xs:all>"),
            "xs:all",
        ),
        (
            ALARM_XSD
                .replace("value=\"low\"", "value=\"a b\"")
                .replace("xs:token", "xs:int"),
            "is not a valid xs:int",
        ),
        (
            ALARM_XSD.replace(
                "<xs:element name=\"Alarm\">",
                "<xs:element name=\"Alarm\" type=\"xs:string\">",
            ),
            "both type= and an inline type",
        ),
        ("<schema/>".to_string(), "root element must be xs:schema"),
    ];
    for (xsd, want) in cases {
        let err = load_error(&xsd);
        assert!(err.starts_with("event schema Alarm.xsd: "), "{err}");
        assert!(err.contains(want), "got {err:?}, want {want:?}");
    }
}

#[test]
fn all_group_and_empty_types_from_a_schema() {
    let xsd = r#"<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns="http://www.gonicus.de/Events"
        targetNamespace="http://www.gonicus.de/Events" elementFormDefault="qualified">
      <xs:complexType name="Ping"/>
      <xs:complexType name="Pair">
        <xs:all minOccurs="0">
          <xs:element name="A" type="xs:decimal"/>
          <xs:element name="B" type="xs:date" minOccurs="0"/>
          <xs:element name="C" type="Ping"/>
        </xs:all>
      </xs:complexType>
    </xs:schema>"#;
    let mut set = SchemaSet::default();
    set.add("Ping", "Ping.xsd", xsd).unwrap();
    set.add("Pair", "Pair.xsd", xsd).unwrap();
    assert!(set.validate(&ev("<Ping/>")).is_ok());
    assert!(set.validate(&ev("<Ping>  </Ping>")).is_ok());
    assert_eq!(
        refused(&set, &ev("<Ping><X/></Ping>")),
        "Ping: unexpected element X, no content is allowed"
    );
    // A whole optional xs:all may be absent; if present, its required members must be there.
    assert!(set.validate(&ev("<Pair/>")).is_ok());
    assert!(set.validate(&ev("<Pair><C/><A>-1.5</A></Pair>")).is_ok());
    assert!(set
        .validate(&ev("<Pair><B>2013-01-31</B><C/><A>2</A></Pair>"))
        .is_ok());
    assert_eq!(
        refused(&set, &ev("<Pair><C/></Pair>")),
        "Pair: missing required element A"
    );
    assert_eq!(
        refused(&set, &ev("<Pair><C/><A>x</A></Pair>")),
        "Pair/A: 'x' is not a valid xs:decimal"
    );
    assert!(refused(&set, &ev("<Pair><C/><A>1</A><C/></Pair>"))
        .contains("C is out of place or occurs too often"));
    assert!(
        refused(&set, &ev("<Pair><C>t</C><A>1</A></Pair>")).contains("Pair/C: unexpected text 't'")
    );
}

#[test]
fn derived_simple_types_check_facets_along_the_chain() {
    let xsd = r#"<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns="http://www.gonicus.de/Events"
        targetNamespace="http://www.gonicus.de/Events" elementFormDefault="qualified">
      <xs:element name="Level">
        <xs:complexType><xs:sequence><xs:element name="V" type="Small"/></xs:sequence></xs:complexType>
      </xs:element>
      <xs:simpleType name="Small"><xs:restriction base="Percent"><xs:maxExclusive value="10"/></xs:restriction></xs:simpleType>
      <xs:simpleType name="Percent">
        <xs:restriction base="xs:decimal"><xs:minInclusive value="0"/><xs:maxInclusive value="100"/></xs:restriction>
      </xs:simpleType>
    </xs:schema>"#;
    let mut set = SchemaSet::default();
    set.add("Level", "Level.xsd", xsd).unwrap();
    assert!(set.validate(&ev("<Level><V>9.5</V></Level>")).is_ok());
    assert!(
        refused(&set, &ev("<Level><V>10</V></Level>")).contains("out of the range of type Small")
    );
    assert!(
        refused(&set, &ev("<Level><V>-1</V></Level>")).contains("out of the range of type Percent")
    );
    // Facets that do not fit the final builtin, and derivation cycles, are load errors.
    let bad = xsd.replace(
        "<xs:maxExclusive value=\"10\"/>",
        "<xs:maxLength value=\"3\"/>",
    );
    assert!(
        load_error(&bad.replace("Level", "Alarm")).contains("length facet on a non-string type")
    );
    let cycle = xsd.replace("base=\"xs:decimal\"", "base=\"Small\"");
    assert!(load_error(&cycle.replace("Level", "Alarm")).contains("derives from itself"));
}

#[test]
fn mangled_input_never_panics() {
    let set = core();
    let xml = node_capabilities(
        "n\u{e9}1",
        &[method("getMethods")],
        &[NodeObject {
            oid: "User".into(),
            signature: Some("s".into()),
        }],
    );
    let mut cuts = 0;
    for (i, _) in xml.char_indices() {
        // Every prefix is either refused or (only the full text) accepted, without panicking.
        assert!(set.validate(&xml[..i]).is_err());
        cuts += 1;
        for junk in [
            "<",
            "&",
            "\"",
            "\u{0}",
            "]]>",
            "<?xml version='1.0'?>",
            "\u{feff}",
            "é",
        ] {
            let mut s = xml.clone();
            s.insert_str(i, junk);
            let _ = set.validate(&s);
        }
    }
    assert!(cuts > 100);
    assert!(set.validate(&xml).is_ok());
}

#[test]
fn types_can_cross_threads() {
    // The agent shares one SchemaSet between tasks and moves events into them.
    fn check<T: Send + Sync + 'static>() {}
    check::<SchemaSet>();
    check::<ValidatedEvent>();
    check::<EventError>();
    check::<SchemaError>();
}
