//! No two modules of a crate import each other in a circle: the layers read one way.
//!
//! The test reads the sources of the agent, manager, manifests and cli crates (`<crate>/src`,
//! except `main.rs`, a separate crate that uses the library by its name) and builds each crate's
//! module graph by this rule:
//!
//! - A module is a file (`foo.rs` and `foo/mod.rs` are `foo`, `foo/bar.rs` is `foo::bar`,
//!   `lib.rs` is the crate root) or an inline `mod name { … }` inside one.
//! - A module depends on every module that a path in its code names: paths starting with
//!   `crate::`, `super::` or `self::` anywhere (`use` items, expressions, types, test code
//!   included), and `use` paths starting with one of its child modules. A path names the longest
//!   prefix of it that is a module; a name re-exported with `pub use` is followed to the module
//!   that defines it, so `crate::Violation`-style shortcuts through the root still count.
//!   Comments and string literals are skipped.
//! - A dependency between a module and its own ancestor or descendant does not count: a parent
//!   using its children, and a child using its parent's items, is how Rust modules nest. Any
//!   other dependency A → B counts as one between the two siblings that contain A and B just
//!   beneath their nearest common ancestor: `http::limits → metrics` is `http → metrics`, and
//!   `engine::tests → store::memory` is `engine → store`.
//!
//! A cycle is a set of two or more siblings that reach each other (a strongly connected
//! component); the test fails listing every one, each edge with the lines behind it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The crates whose modules must layer one way.
const CRATES: [&str; 4] = ["agent", "manager", "manifests", "cli"];

type ModPath = Vec<String>;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    PathSep,
    Open(char),
    Close(char),
    Semi,
    Comma,
    Star,
    Punct,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    line: usize,
}

/// Rust source as tokens, without comments and literals (strings, chars, numbers).
fn lex(src: &str) -> Vec<Token> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut line = 1;
    let is_ident_start = |ch: char| ch.is_alphabetic() || ch == '_';
    let is_ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied();
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if c[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if ch == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                if c.get(i) == Some(&'\n') {
                    line += 1;
                }
                i += 1;
            }
            i += 1;
        } else if ch == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a), which is skipped whole.
            if next == Some('\\') {
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
                while i < c.len() && is_ident(c[i]) {
                    i += 1;
                }
            }
        } else if is_ident_start(ch) {
            let start = i;
            while i < c.len() && is_ident(c[i]) {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let raw_prefix = matches!(word.as_str(), "r" | "br" | "cr");
            if raw_prefix && matches!(c.get(i), Some('#') | Some('"')) {
                // r"…", r#"…"#, or a raw identifier r#name.
                let mut hashes = 0;
                while c.get(i + hashes) == Some(&'#') {
                    hashes += 1;
                }
                if c.get(i + hashes) == Some(&'"') {
                    i += hashes + 1;
                    loop {
                        if i >= c.len() {
                            break;
                        }
                        if c[i] == '"' && (1..=hashes).all(|h| c.get(i + h) == Some(&'#')) {
                            i += hashes + 1;
                            break;
                        }
                        if c[i] == '\n' {
                            line += 1;
                        }
                        i += 1;
                    }
                } else {
                    i += hashes;
                    let start = i;
                    while i < c.len() && is_ident(c[i]) {
                        i += 1;
                    }
                    let name: String = c[start..i].iter().collect();
                    out.push(Token {
                        tok: Tok::Ident(name),
                        line,
                    });
                }
            } else if matches!(word.as_str(), "b" | "c") && c.get(i) == Some(&'"') {
                // b"…" / c"…": the string itself is skipped by the next round.
            } else if word == "b" && c.get(i) == Some(&'\'') {
                // b'x': the char itself is skipped by the next round.
            } else {
                out.push(Token {
                    tok: Tok::Ident(word),
                    line,
                });
            }
        } else if ch.is_ascii_digit() {
            while i < c.len() && is_ident(c[i]) {
                i += 1;
            }
        } else {
            let tok = match ch {
                ':' if next == Some(':') => {
                    i += 1;
                    Tok::PathSep
                }
                '{' | '(' | '[' => Tok::Open(ch),
                '}' | ')' | ']' => Tok::Close(ch),
                ';' => Tok::Semi,
                ',' => Tok::Comma,
                '*' => Tok::Star,
                _ => Tok::Punct,
            };
            out.push(Token { tok, line });
            i += 1;
        }
    }
    out
}

fn ident(t: &[Token], i: usize) -> Option<&str> {
    match t.get(i).map(|t| &t.tok) {
        Some(Tok::Ident(s)) => Some(s),
        _ => None,
    }
}

fn is(t: &[Token], i: usize, tok: &Tok) -> bool {
    t.get(i).map(|t| &t.tok) == Some(tok)
}

/// One leaf of a `use` tree: its full path and the name it binds (None for a glob).
#[derive(Debug)]
struct UseLeaf {
    path: Vec<String>,
    name: Option<String>,
}

fn parse_use_tree(t: &[Token], i: &mut usize, prefix: Vec<String>, out: &mut Vec<UseLeaf>) {
    let mut path = prefix;
    if is(t, *i, &Tok::PathSep) {
        // `use ::name`: always another crate.
        *i += 1;
        path.push("::".to_string());
    }
    loop {
        match t.get(*i).map(|t| &t.tok) {
            Some(Tok::Ident(s)) => {
                path.push(s.clone());
                *i += 1;
            }
            Some(Tok::Star) => {
                *i += 1;
                out.push(UseLeaf { path, name: None });
                return;
            }
            Some(Tok::Open('{')) => {
                *i += 1;
                while *i < t.len() && !is(t, *i, &Tok::Close('}')) {
                    let before = *i;
                    parse_use_tree(t, i, path.clone(), out);
                    // Past the comma, or past a token the tree did not take (never stuck).
                    if is(t, *i, &Tok::Comma) || *i == before {
                        *i += 1;
                    }
                }
                *i += 1;
                return;
            }
            _ => return,
        }
        if is(t, *i, &Tok::PathSep) {
            *i += 1;
        } else {
            break;
        }
    }
    if path.last().map(String::as_str) == Some("self") {
        path.pop();
    }
    let mut name = path.last().cloned();
    if ident(t, *i) == Some("as") {
        name = ident(t, *i + 1).map(str::to_string);
        *i += 2;
    }
    out.push(UseLeaf { path, name });
}

/// A path written in a module, where it was written.
#[derive(Debug)]
struct Reference {
    module: ModPath,
    path: Vec<String>,
    file: PathBuf,
    line: usize,
}

#[derive(Default)]
struct Crate {
    modules: BTreeSet<ModPath>,
    /// (module, name) → (module the `pub use` is in, the path it re-exports).
    reexports: HashMap<(ModPath, String), (ModPath, Vec<String>)>,
    references: Vec<Reference>,
}

fn file_module(src: &Path, file: &Path) -> anyhow::Result<ModPath> {
    let rel = file.strip_prefix(src)?.with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    Ok(parts)
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            rust_files(&path, found)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
    Ok(())
}

fn scan_file(krate: &mut Crate, file: &Path, file_mod: &ModPath, src: &str) {
    let t = lex(src);
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let current = |inline: &[(String, usize)]| -> ModPath {
        let mut m = file_mod.clone();
        m.extend(inline.iter().map(|(n, _)| n.clone()));
        m
    };
    let mut i = 0;
    while i < t.len() {
        match &t[i].tok {
            Tok::Open('{') => {
                depth += 1;
                i += 1;
            }
            Tok::Close('}') => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
                i += 1;
            }
            Tok::Ident(w) if w == "mod" && is(&t, i + 2, &Tok::Open('{')) => {
                if let Some(name) = ident(&t, i + 1) {
                    inline.push((name.to_string(), depth + 1));
                    let mut m = current(&inline);
                    krate.modules.insert(m.clone());
                    while m.len() > file_mod.len() {
                        m.pop();
                        krate.modules.insert(m.clone());
                    }
                }
                i += 2;
            }
            Tok::Ident(w) if w == "use" => {
                let public = i >= 1 && ident(&t, i - 1) == Some("pub")
                    || i >= 4 && ident(&t, i - 4) == Some("pub") && is(&t, i - 3, &Tok::Open('('));
                let line = t[i].line;
                i += 1;
                let mut leaves = Vec::new();
                parse_use_tree(&t, &mut i, Vec::new(), &mut leaves);
                while i < t.len() && !is(&t, i, &Tok::Semi) {
                    i += 1;
                }
                let module = current(&inline);
                for leaf in leaves {
                    if public && let Some(name) = &leaf.name {
                        krate.reexports.insert(
                            (module.clone(), name.clone()),
                            (module.clone(), leaf.path.clone()),
                        );
                    }
                    krate.references.push(Reference {
                        module: module.clone(),
                        path: leaf.path,
                        file: file.to_path_buf(),
                        line,
                    });
                }
            }
            Tok::Ident(w)
                if matches!(w.as_str(), "crate" | "super" | "self")
                    && is(&t, i + 1, &Tok::PathSep)
                    && !(i >= 1 && is(&t, i - 1, &Tok::PathSep)) =>
            {
                let line = t[i].line;
                let mut path = vec![w.clone()];
                i += 1;
                while is(&t, i, &Tok::PathSep) {
                    let Some(seg) = ident(&t, i + 1) else { break };
                    path.push(seg.to_string());
                    i += 2;
                }
                krate.references.push(Reference {
                    module: current(&inline),
                    path,
                    file: file.to_path_buf(),
                    line,
                });
            }
            _ => i += 1,
        }
    }
}

fn scan_crate(src: &Path) -> anyhow::Result<Crate> {
    let mut files = Vec::new();
    rust_files(src, &mut files)?;
    files.retain(|f| f != &src.join("main.rs"));
    files.sort();
    let mut krate = Crate::default();
    let mut per_file = Vec::new();
    for file in files {
        let module = file_module(src, &file)?;
        krate.modules.insert(module.clone());
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let rel = file.strip_prefix(src)?.to_path_buf();
        per_file.push((rel, module, text));
    }
    for (file, module, text) in &per_file {
        scan_file(&mut krate, file, module, text);
    }
    Ok(krate)
}

impl Crate {
    /// The module `path`, written in `module`, names; None for other crates and local items.
    fn resolve(&self, module: &[String], path: &[String], hops: usize) -> Option<ModPath> {
        let first = path.first()?;
        let (mut at, rest): (ModPath, &[String]) = match first.as_str() {
            "crate" => (Vec::new(), &path[1..]),
            "self" => (module.to_vec(), &path[1..]),
            "super" => {
                let ups = path.iter().take_while(|s| *s == "super").count();
                let keep = module.len().checked_sub(ups)?;
                (module[..keep].to_vec(), &path[ups..])
            }
            child => {
                let mut candidate = module.to_vec();
                candidate.push(child.to_string());
                if !self.modules.contains(&candidate) {
                    return None;
                }
                (module.to_vec(), path)
            }
        };
        for seg in rest {
            let mut candidate = at.clone();
            candidate.push(seg.clone());
            if self.modules.contains(&candidate) {
                at = candidate;
                continue;
            }
            if hops < 8
                && let Some((from, target)) = self.reexports.get(&(at.clone(), seg.clone()))
                && let Some(found) = self.resolve(from, target, hops + 1)
            {
                return Some(found);
            }
            break;
        }
        Some(at)
    }

    /// Sibling → sibling → the references behind the edge.
    fn graph(&self) -> BTreeMap<ModPath, BTreeMap<ModPath, Vec<String>>> {
        let mut graph: BTreeMap<ModPath, BTreeMap<ModPath, Vec<String>>> = BTreeMap::new();
        for r in &self.references {
            let Some(target) = self.resolve(&r.module, &r.path, 0) else {
                continue;
            };
            let common = r
                .module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            if common == r.module.len() || common == target.len() {
                continue;
            }
            let from = r.module[..=common].to_vec();
            let to = target[..=common].to_vec();
            graph.entry(to.clone()).or_default();
            graph
                .entry(from)
                .or_default()
                .entry(to)
                .or_default()
                .push(format!(
                    "src/{}:{} {} (in {})",
                    r.file.display(),
                    r.line,
                    r.path.join("::"),
                    name(&r.module)
                ));
        }
        graph
    }
}

fn name(module: &[String]) -> String {
    if module.is_empty() {
        "crate".to_string()
    } else {
        module.join("::")
    }
}

/// The strongly connected components of two or more modules (Tarjan).
fn cycles(graph: &BTreeMap<ModPath, BTreeMap<ModPath, Vec<String>>>) -> Vec<Vec<ModPath>> {
    struct State<'a> {
        graph: &'a BTreeMap<ModPath, BTreeMap<ModPath, Vec<String>>>,
        index: HashMap<&'a ModPath, usize>,
        low: HashMap<&'a ModPath, usize>,
        stack: Vec<&'a ModPath>,
        on_stack: BTreeSet<&'a ModPath>,
        found: Vec<Vec<ModPath>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a ModPath) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        let graph = s.graph;
        for w in graph.get(v).into_iter().flat_map(|e| e.keys()) {
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.clone());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: HashMap::new(),
        low: HashMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.found.sort();
    s.found
}

/// Every cycle of the crate whose sources are in `src`, described for a person.
fn describe_cycles(label: &str, src: &Path) -> anyhow::Result<(usize, Vec<String>)> {
    let krate = scan_crate(src)?;
    let graph = krate.graph();
    let edges = graph.values().map(BTreeMap::len).sum();
    let mut described = Vec::new();
    for component in cycles(&graph) {
        let members: BTreeSet<&ModPath> = component.iter().collect();
        let mut text = format!(
            "{label}: {}",
            component
                .iter()
                .map(|m| name(m))
                .collect::<Vec<_>>()
                .join(" ↔ ")
        );
        for from in &component {
            for (to, why) in &graph[from] {
                if members.contains(to) {
                    text.push_str(&format!("\n    {} → {}:", name(from), name(to)));
                    for w in why {
                        text.push_str(&format!("\n        {label}/{w}"));
                    }
                }
            }
        }
        described.push(text);
    }
    Ok((edges, described))
}

#[test]
fn no_module_cycles_in_any_crate() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut all = Vec::new();
    for krate in CRATES {
        let src = root.join(krate).join("src");
        let (edges, cycles) = describe_cycles(krate, &src)?;
        // A scan that finds nothing would pass vacuously: every crate has sibling imports.
        assert!(
            edges > 0,
            "{krate}: no module dependencies found under {}",
            src.display()
        );
        if std::env::var_os("MODULE_LAYERS_DUMP").is_some() {
            let graph = scan_crate(&src)?.graph();
            for (from, to) in &graph {
                for t in to.keys() {
                    eprintln!("{krate}: {} -> {}", name(from), name(t));
                }
            }
        }
        all.extend(cycles);
    }
    assert!(
        all.is_empty(),
        "modules that import each other in a circle (make the layers read one way):\n{}",
        all.join("\n")
    );
    Ok(())
}

/// The rule itself, on a small tree: sibling cycles through `use`, expressions, inline modules
/// and re-exports are found; parent/child edges, comments and strings are not edges.
#[test]
fn the_scan_finds_sibling_cycles_and_only_those() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let src = dir.path();
    let files = [
        ("lib.rs", "mod a; mod b; mod c; pub use c::Thing;\n"),
        // a → b (use), a → c (through the root's re-export).
        (
            "a.rs",
            "use crate::b::X;\nuse crate::Thing;\npub fn f() {}\n",
        ),
        // b → a only from an inline module's expression: super::super is the root.
        (
            "b.rs",
            "pub struct X;\n#[cfg(test)]\nmod tests {\n    fn g() { super::super::a::f(); }\n}\n",
        ),
        // c and its child use each other (parent/child: fine); c names a only in a comment,
        // a string, a raw string and a char-heavy line, which are not edges.
        (
            "c.rs",
            "mod d;\npub use d::Thing;\n// use crate::a::f;\n/* crate::a::f() */\n\
             const S: &str = \"crate::a::f\";\nconst R: &str = r#\"crate::a::f \"x\" \"#;\n\
             const C: char = '{';\n",
        ),
        (
            "c/d.rs",
            "pub struct Thing;\nfn h() { let _ = super::S; }\n",
        ),
    ];
    for (path, text) in files {
        let path = src.join(path);
        std::fs::create_dir_all(path.parent().context("no parent")?)?;
        std::fs::write(&path, text)?;
    }
    let krate = scan_crate(src)?;
    let graph = krate.graph();
    let a = vec!["a".to_string()];
    let b = vec!["b".to_string()];
    let c = vec!["c".to_string()];
    let targets = |m: &ModPath| -> Vec<ModPath> {
        graph
            .get(m)
            .map(|e| e.keys().cloned().collect())
            .unwrap_or_default()
    };
    assert_eq!(
        targets(&a),
        vec![b.clone(), c.clone()],
        "edges of a: {graph:#?}"
    );
    assert_eq!(targets(&b), vec![a.clone()], "edges of b: {graph:#?}");
    assert_eq!(targets(&c), Vec::<ModPath>::new(), "edges of c: {graph:#?}");
    assert_eq!(cycles(&graph), vec![vec![a, b]]);
    let (_, described) = describe_cycles("demo", src)?;
    assert_eq!(described.len(), 1, "{described:?}");
    assert!(
        described[0].contains("demo/src/b.rs:4 super::super::a::f (in b::tests)"),
        "{}",
        described[0]
    );
    Ok(())
}
