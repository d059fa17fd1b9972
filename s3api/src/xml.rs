//! XML for S3: escaping, a small writer for response documents, and parsers for the request
//! documents S3 clients send (CompleteMultipartUpload, Delete, CreateBucketConfiguration),
//! namespace- and order-agnostic.

use std::rc::Rc;

use quick_xml::Reader;
use quick_xml::events::Event;

use crate::error::S3Error;

/// The S3 namespace of response documents.
pub const NS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";

/// Escapes text for an XML element.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters XML 1.0 cannot carry are written as character references,
            // as S3 writes them. Strict XML 1.0 parsers (expat, so boto3) refuse those too:
            // clients list such keys with encoding-type=url, which S3 documents for this. A
            // raw CR would be read back as LF (XML's end-of-line handling): a reference keeps
            // it.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n') => {
                out.push_str(&format!("&#x{:X};", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// Builds a response document.
#[derive(Debug)]
pub struct XmlWriter {
    out: String,
    open: Vec<&'static str>,
}

impl XmlWriter {
    /// A document whose root element is `root` (in the S3 namespace).
    pub fn new(root: &'static str) -> Self {
        let mut out = String::with_capacity(1024);
        out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        out.push_str(&format!("<{root} xmlns=\"{NS}\">"));
        XmlWriter {
            out,
            open: vec![root],
        }
    }

    /// `<name>text</name>`.
    pub fn element(&mut self, name: &str, text: &str) -> &mut Self {
        self.out
            .push_str(&format!("<{name}>{}</{name}>", escape(text)));
        self
    }

    /// `<name>text</name>` if `text` is given.
    pub fn optional(&mut self, name: &str, text: Option<&str>) -> &mut Self {
        if let Some(t) = text {
            self.element(name, t);
        }
        self
    }

    /// Opens `<name attr="value"...>` (values escaped).
    pub fn start_with(&mut self, name: &'static str, attributes: &[(&str, &str)]) -> &mut Self {
        self.out.push('<');
        self.out.push_str(name);
        for (attr, value) in attributes {
            self.out.push_str(&format!(" {attr}=\"{}\"", escape(value)));
        }
        self.out.push('>');
        self.open.push(name);
        self
    }

    /// Opens `<name>`.
    pub fn start(&mut self, name: &'static str) -> &mut Self {
        self.out.push_str(&format!("<{name}>"));
        self.open.push(name);
        self
    }

    /// Closes the innermost open element.
    pub fn end(&mut self) -> &mut Self {
        if let Some(name) = self.open.pop() {
            self.out.push_str(&format!("</{name}>"));
        }
        self
    }

    /// Closes everything and returns the document.
    pub fn finish(mut self) -> String {
        while !self.open.is_empty() {
            self.end();
        }
        self.out
    }
}

/// An element of a request document: its name and the element it is in. Paths share their
/// ancestors, so a document costs memory in proportion to its size whatever its shape.
#[derive(Debug)]
struct Element {
    name: String,
    parent: Option<Rc<Element>>,
}

impl Element {
    /// Element names from the root down to this one.
    fn path(&self) -> Vec<&str> {
        let mut names = vec![self.name.as_str()];
        let mut at = self.parent.as_deref();
        while let Some(e) = at {
            names.push(e.name.as_str());
            at = e.parent.as_deref();
        }
        names.reverse();
        names
    }
}

/// What the parser saw: an element opening, or text inside an element (verbatim: whitespace
/// can be part of a key).
#[derive(Debug)]
enum Node {
    Start(Rc<Element>),
    Text(Rc<Element>, String),
}

/// What an entity or character reference stands for; `None` for an unknown entity or a
/// reference that is not XML 1.0 (digits only, and a character XML allows: `&#0;` or `&#x+41;`
/// are not).
fn resolve_reference(name: &str) -> Option<String> {
    let character = |digits: &str, radix: u32| {
        if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
            return None;
        }
        char::from_u32(u32::from_str_radix(digits, radix).ok()?).filter(|&c| is_xml_char(c))
    };
    Some(match name {
        "amp" => "&".into(),
        "lt" => "<".into(),
        "gt" => ">".into(),
        "quot" => "\"".into(),
        "apos" => "'".into(),
        n if n.starts_with("#x") => character(&n[2..], 16)?.into(),
        n if n.starts_with('#') => character(&n[1..], 10)?.into(),
        _ => return None,
    })
}

/// Whether XML 1.0 allows `c` in a document (its `Char` production).
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | ' '..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Deepest element nesting a request document may have (S3's are a few levels deep).
const MAX_DEPTH: usize = 16;

/// Most element openings and texts a request document may have (10,000 parts of a
/// CompleteMultipartUpload need about 80,000, and as many again for indentation).
const MAX_NODES: usize = 200_000;

/// Longest element name accepted (S3's are a few dozen bytes).
const MAX_NAME: usize = 256;

/// Appends `text` to the text of `element` if that is the last node, else starts a new one
/// (entity references and CDATA arrive as separate events). Outside the root only whitespace
/// (and a byte order mark) may appear.
fn push_text(
    out: &mut Vec<Node>,
    element: &Option<Rc<Element>>,
    text: &str,
) -> Result<(), S3Error> {
    let Some(element) = element else {
        return if text.chars().all(|c| c.is_whitespace() || c == '\u{FEFF}') {
            Ok(())
        } else {
            Err(S3Error::malformed_xml())
        };
    };
    // A control character (raw; a reference to one never resolves) is not XML: S3 answers
    // MalformedXML, where taking it would echo a key no XML parser reads back.
    if !text.chars().all(is_xml_char) {
        return Err(S3Error::malformed_xml());
    }
    match out.last_mut() {
        Some(Node::Text(e, existing)) if Rc::ptr_eq(e, element) => existing.push_str(text),
        _ => out.push(Node::Text(element.clone(), text.to_string())),
    }
    Ok(())
}

/// The request document as a flat list of element openings and texts.
fn flatten(body: &[u8]) -> Result<Vec<Node>, S3Error> {
    let mut reader = Reader::from_reader(body);
    let mut current: Option<Rc<Element>> = None;
    let mut depth = 0usize;
    let mut out = Vec::new();
    let mut buf = Vec::new();
    let mut roots = 0;
    let mut open = |current: &Option<Rc<Element>>, name: &str| {
        if name.len() > MAX_NAME {
            return Err(S3Error::malformed_xml());
        }
        // One document, one root: a second would merge into the first's request.
        if current.is_none() {
            roots += 1;
            if roots > 1 {
                return Err(S3Error::malformed_xml());
            }
        }
        Ok(Rc::new(Element {
            name: name.to_string(),
            parent: current.clone(),
        }))
    };
    loop {
        if depth > MAX_DEPTH || out.len() > MAX_NODES {
            return Err(S3Error::malformed_xml());
        }
        match reader.read_event_into(&mut buf) {
            Ok(Event::Start(e)) => {
                let element = open(&current, e.local_name().as_ref())?;
                out.push(Node::Start(element.clone()));
                current = Some(element);
                depth += 1;
            }
            Ok(Event::Empty(e)) => {
                let element = open(&current, e.local_name().as_ref())?;
                out.push(Node::Start(element.clone()));
                out.push(Node::Text(element, String::new()));
            }
            Ok(Event::End(_)) => {
                current = current.and_then(|e| e.parent.clone());
                depth = depth.saturating_sub(1);
            }
            Ok(Event::Text(t)) => push_text(&mut out, &current, &t.xml10_content())?,
            Ok(Event::CData(t)) => push_text(&mut out, &current, &t)?,
            Ok(Event::GeneralRef(r)) => {
                let resolved =
                    resolve_reference(&r.into_inner()).ok_or_else(S3Error::malformed_xml)?;
                push_text(&mut out, &current, &resolved)?;
            }
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(_) => return Err(S3Error::malformed_xml()),
        }
        buf.clear();
    }
    if current.is_some() {
        return Err(S3Error::malformed_xml());
    }
    Ok(out)
}

/// The path of `element` below the document's root, which must be `root`.
fn under<'a>(element: &'a Element, root: &str) -> Result<Vec<&'a str>, S3Error> {
    let path = element.path();
    if path.first() != Some(&root) {
        return Err(S3Error::malformed_xml());
    }
    Ok(path[1..].to_vec())
}

/// One part named in CompleteMultipartUpload.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CompletedPart {
    /// Part number.
    pub part_number: u32,
    /// ETag as sent (quotes stripped).
    pub etag: String,
    /// Checksums sent per part: (algorithm, value).
    pub checksums: Vec<(String, String)>,
}

/// Parses a CompleteMultipartUpload document.
pub fn parse_complete(body: &[u8]) -> Result<Vec<CompletedPart>, S3Error> {
    let mut parts: Vec<CompletedPart> = Vec::new();
    for node in flatten(body)? {
        match node {
            Node::Start(path) => {
                if under(&path, "CompleteMultipartUpload")?.as_slice() == ["Part"] {
                    parts.push(CompletedPart::default());
                }
            }
            Node::Text(path, text) => {
                let rel = under(&path, "CompleteMultipartUpload")?;
                let (Some(&"Part"), Some(field), Some(part)) =
                    (rel.first(), rel.get(1), parts.last_mut())
                else {
                    continue;
                };
                match *field {
                    "PartNumber" => {
                        let number: i64 =
                            text.trim().parse().map_err(|_| S3Error::malformed_xml())?;
                        if number < 1 {
                            return Err(S3Error::invalid_argument("PartNumber must be >= 1"));
                        }
                        // Past the last part there can be (10,000): no part is it (InvalidPart).
                        part.part_number = u32::try_from(number).unwrap_or(u32::MAX);
                    }
                    "ETag" => part.etag = text.trim().trim_matches('"').to_string(),
                    name if name.starts_with("Checksum") => {
                        part.checksums.push((
                            name.trim_start_matches("Checksum").to_string(),
                            text.trim().to_string(),
                        ));
                    }
                    _ => {}
                }
            }
        }
    }
    if parts.is_empty() || parts.iter().any(|p| p.part_number == 0) {
        return Err(S3Error::malformed_xml());
    }
    Ok(parts)
}

/// An object named in a Delete document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteTarget {
    /// Key.
    pub key: String,
    /// Version id, if given.
    pub version_id: Option<String>,
    /// The ETag it must have to be deleted (a conditional delete), if given.
    pub etag: Option<String>,
}

/// Parses a Delete (DeleteObjects) document: the objects and the Quiet flag.
pub fn parse_delete(body: &[u8]) -> Result<(Vec<DeleteTarget>, bool), S3Error> {
    let mut objects: Vec<DeleteTarget> = Vec::new();
    let mut quiet = false;
    for node in flatten(body)? {
        match node {
            Node::Start(path) => {
                if under(&path, "Delete")?.as_slice() == ["Object"] {
                    objects.push(DeleteTarget {
                        key: String::new(),
                        version_id: None,
                        etag: None,
                    });
                }
            }
            Node::Text(path, text) => match under(&path, "Delete")?.as_slice() {
                ["Quiet"] => quiet = text.trim().eq_ignore_ascii_case("true"),
                ["Object", "Key"] => {
                    if let Some(o) = objects.last_mut() {
                        o.key = text;
                    }
                }
                ["Object", "VersionId"] => {
                    if let Some(o) = objects.last_mut() {
                        o.version_id = Some(text.trim().to_string());
                    }
                }
                ["Object", "ETag"] => {
                    if let Some(o) = objects.last_mut() {
                        o.etag = Some(text.trim().to_string());
                    }
                }
                ["Object", "LastModifiedTime" | "Size"] => {
                    return Err(S3Error::not_implemented(
                        "Conditional deletes by last-modified time or size",
                    ));
                }
                _ => {}
            },
        }
    }
    if objects.is_empty() || objects.len() > 1000 || objects.iter().any(|o| o.key.is_empty()) {
        return Err(S3Error::malformed_xml());
    }
    Ok((objects, quiet))
}

/// One grant of an AccessControlPolicy document: whom (by canonical ID, group URI or e-mail
/// address, whichever the grantee names) and what.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AclGrant {
    /// The grantee's canonical user ID.
    pub id: Option<String>,
    /// The grantee group's URI.
    pub uri: Option<String>,
    /// The grantee's e-mail address.
    pub email: Option<String>,
    /// FULL_CONTROL, READ, WRITE, READ_ACP or WRITE_ACP.
    pub permission: String,
}

/// Parses the grants of an AccessControlPolicy (PutBucketAcl, PutObjectAcl) document.
pub fn parse_acl(body: &[u8]) -> Result<Vec<AclGrant>, S3Error> {
    let mut grants: Vec<AclGrant> = Vec::new();
    for node in flatten(body)? {
        match node {
            Node::Start(path) => {
                if under(&path, "AccessControlPolicy")?.as_slice() == ["AccessControlList", "Grant"]
                {
                    grants.push(AclGrant::default());
                }
            }
            Node::Text(path, text) => {
                let rel = under(&path, "AccessControlPolicy")?;
                let Some(grant) = grants.last_mut() else {
                    continue;
                };
                let text = text.trim().to_string();
                match rel.as_slice() {
                    ["AccessControlList", "Grant", "Grantee", "ID"] => grant.id = Some(text),
                    ["AccessControlList", "Grant", "Grantee", "URI"] => grant.uri = Some(text),
                    ["AccessControlList", "Grant", "Grantee", "EmailAddress"] => {
                        grant.email = Some(text)
                    }
                    ["AccessControlList", "Grant", "Permission"] => grant.permission = text,
                    _ => {}
                }
            }
        }
    }
    Ok(grants)
}

/// The LocationConstraint of a CreateBucketConfiguration, if any.
pub fn parse_location_constraint(body: &[u8]) -> Result<Option<String>, S3Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    for node in flatten(body)? {
        if let Node::Text(element, text) = node
            && element.name == "LocationConstraint"
        {
            return Ok(Some(text.trim().to_string()).filter(|t| !t.is_empty()));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_or_huge_documents_are_malformed_not_expanded() {
        let deep = "<a>".repeat(21_845);
        assert_eq!(
            parse_location_constraint(deep.as_bytes()).unwrap_err().code,
            "MalformedXML"
        );
        let wide = format!("<Delete>{}</Delete>", "<Object/>".repeat(MAX_NODES));
        assert_eq!(
            parse_delete(wide.as_bytes()).unwrap_err().code,
            "MalformedXML"
        );
        let nested = format!("{}{}", "<a>".repeat(MAX_DEPTH), "</a>".repeat(MAX_DEPTH));
        assert!(
            flatten(nested.as_bytes()).is_ok(),
            "nesting within the limit parses"
        );
    }

    #[test]
    fn a_document_costs_memory_in_proportion_to_its_size() {
        // The root's name is stored once, not once per child (with 1 MiB names and copied
        // paths, a 1 MB document cost 200 GB); names are bounded too.
        let name = "A".repeat(MAX_NAME);
        let body = format!("<{name}>{}</{name}>", "<a/>".repeat(90_000));
        let nodes = flatten(body.as_bytes()).unwrap();
        assert_eq!(nodes.len(), 1 + 2 * 90_000);
        let longer = "A".repeat(MAX_NAME + 1);
        assert!(flatten(format!("<{longer}/>").as_bytes()).is_err());
    }

    #[test]
    fn a_second_root_is_malformed_not_merged() {
        let one = "<Delete><Object><Key>a</Key></Object></Delete>";
        assert_eq!(parse_delete(one.as_bytes()).unwrap().0.len(), 1);
        let two = format!("{one}\n{one}");
        assert_eq!(
            parse_delete(two.as_bytes()).unwrap_err().code,
            "MalformedXML"
        );
        let part = "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>a</ETag></Part></CompleteMultipartUpload>";
        assert_eq!(parse_complete(part.as_bytes()).unwrap().len(), 1);
        let doubled = format!("{part}<CompleteMultipartUpload/>");
        assert!(parse_complete(doubled.as_bytes()).is_err());
    }

    #[test]
    fn keys_are_taken_verbatim() {
        let body = "<Delete>\n  <Object><Key> x.txt </Key></Object>\n  <Object><Key>Tom &amp; Jerry.mp4</Key></Object>\n  <Object><Key><![CDATA[a<b]]> &#x9;c</Key></Object>\n  <Object><Key>cr&#13;lf</Key></Object>\n  <Quiet> true </Quiet>\n</Delete>";
        let (objects, quiet) = parse_delete(body.as_bytes()).unwrap();
        let keys: Vec<&str> = objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, [" x.txt ", "Tom & Jerry.mp4", "a<b \tc", "cr\rlf"]);
        assert!(quiet);
        assert_eq!(escape("cr\rlf"), "cr&#xD;lf", "a CR survives a round trip");
    }

    #[test]
    fn characters_xml_does_not_allow_are_malformed() {
        for key in [
            "a&#0;b", "a&#x1;b", "&#xFFFE;", "&#x+41;", "&#;", "&#x;", "a\u{1}b",
        ] {
            let body = format!("<Delete><Object><Key>{key}</Key></Object></Delete>");
            assert_eq!(
                parse_delete(body.as_bytes()).unwrap_err().code,
                "MalformedXML",
                "{key:?}"
            );
        }
        let body = "<Delete><Object><Key>&#65;&#x42;&#x1F600;</Key></Object></Delete>";
        assert_eq!(
            parse_delete(body.as_bytes()).unwrap().0[0].key,
            "AB\u{1F600}"
        );
    }

    #[test]
    fn complete_document_from_aws_cli() {
        let body = br#"<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Part><ETag>"a1"</ETag><PartNumber>1</PartNumber><ChecksumCRC32>KjvZgw==</ChecksumCRC32></Part><Part><PartNumber>2</PartNumber><ETag>&quot;b2&quot;</ETag></Part></CompleteMultipartUpload>"#;
        let parts = parse_complete(body).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].part_number, 1);
        assert_eq!(parts[0].etag, "a1");
        assert_eq!(
            parts[0].checksums,
            vec![("CRC32".to_string(), "KjvZgw==".to_string())]
        );
        assert_eq!(parts[1].part_number, 2);
        assert_eq!(parts[1].etag, "b2");
    }

    /// A part number below 1 is InvalidArgument, as S3 answers; one that is no number is
    /// MalformedXML, and one past any part's is kept (to be no part: InvalidPart).
    #[test]
    fn complete_part_numbers_below_one_are_invalid_arguments() {
        let doc = |n: &str| {
            format!(
                "<CompleteMultipartUpload><Part><PartNumber>{n}</PartNumber><ETag>e</ETag></Part></CompleteMultipartUpload>"
            )
        };
        for n in ["0", "-3"] {
            let e = parse_complete(doc(n).as_bytes()).unwrap_err();
            assert_eq!((e.code, e.status.as_u16()), ("InvalidArgument", 400), "{n}");
        }
        assert_eq!(
            parse_complete(doc("x").as_bytes()).unwrap_err().code,
            "MalformedXML"
        );
        let far = parse_complete(doc("99999999999").as_bytes()).unwrap();
        assert_eq!(far[0].part_number, u32::MAX);
    }

    #[test]
    fn delete_document_with_entities_and_quiet() {
        let body = br#"<Delete xmlns="x"><Object><Key>a</Key></Object><Object><Key>b&amp;&lt;c&gt;</Key><VersionId>v1</VersionId></Object><Quiet>true</Quiet></Delete>"#;
        let (objects, quiet) = parse_delete(body).unwrap();
        assert!(quiet);
        assert_eq!(objects[1].key, "b&<c>");
        assert_eq!(objects[1].version_id.as_deref(), Some("v1"));
    }

    #[test]
    fn malformed_documents_are_refused() {
        assert!(parse_complete(b"<CompleteMultipartUpload><Part>").is_err());
        assert!(parse_complete(b"<Other/>").is_err());
        assert!(parse_delete(b"<Delete></Delete>").is_err());
        assert!(parse_complete(b"not xml at all <<<").is_err());
        assert!(parse_delete(b"garbage<Delete><Object><Key>k</Key></Object></Delete>").is_err());
        assert!(
            parse_delete(b"\n <Delete><Object><Key>k</Key></Object></Delete>\n").is_ok(),
            "whitespace around the root is fine"
        );
    }

    #[test]
    fn writer_nests_and_escapes() {
        let mut w = XmlWriter::new("Root");
        w.start("A").element("K", "x<y").end().optional("B", None);
        let s = w.finish();
        assert!(s.ends_with(
            "<Root xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><A><K>x&lt;y</K></A></Root>"
        ));
    }

    #[test]
    fn location_constraint() {
        assert_eq!(parse_location_constraint(b"").unwrap(), None);
        let b = br#"<CreateBucketConfiguration xmlns="x"><LocationConstraint>eu-west-1</LocationConstraint></CreateBucketConfiguration>"#;
        assert_eq!(
            parse_location_constraint(b).unwrap().as_deref(),
            Some("eu-west-1")
        );
    }
}
