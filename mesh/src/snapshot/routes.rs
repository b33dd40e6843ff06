//! A listener's routes compiled into a lookup-ready table.
//!
//! Semantics: the first route in file order whose every condition holds wins.
//! Cost: host is one hash lookup (plus one per label for wildcard hosts), path is one
//! hash lookup for exact paths plus one walk of a byte trie for prefixes; only routes
//! whose path is a regex (or absent) are tested one by one. So lookup does not grow
//! linearly with the number of host / exact / prefix routes.
//!
//! How file order survives bucketing: every bucket (an exact host, a wildcard suffix,
//! or "any host") holds the indices of *all* routes that can match a request landing
//! in it, in file order; lookup merges the path candidates of one bucket and takes the
//! smallest index whose remaining conditions hold.

use std::collections::HashMap;
use std::sync::Arc;

use regex::Regex;

use super::Route;

/// The request facts that route conditions look at.
pub trait RequestFacts {
    /// Host without port, ASCII-lowercased.
    fn host(&self) -> &str;
    /// Path without the query string.
    fn path(&self) -> &str;
    fn method(&self) -> &[u8];
    /// First value of a header; `name` is lowercase.
    fn header(&self, name: &str) -> Option<&[u8]>;
    /// Whether any value of the header `name` (lowercase) satisfies `pred`: a request
    /// may carry a field more than once, and a condition on it must see every value.
    fn any_header(&self, name: &str, pred: impl FnMut(&[u8]) -> bool) -> bool;
    /// The query string, after `?` (empty without one).
    fn query(&self) -> &str;
}

#[derive(Debug)]
pub enum HostMatch {
    Any,
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
}

#[derive(Debug)]
pub enum PathMatch {
    Any,
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

#[derive(Debug)]
pub struct HeaderMatcher {
    /// Lowercase.
    pub name: String,
    pub kind: HeaderMatchKind,
    pub invert: bool,
}

#[derive(Debug)]
pub enum HeaderMatchKind {
    Present,
    Exact(Vec<u8>),
    Regex(Regex),
    /// A gRPC content type (`match.grpc_service` adds this on `content-type`).
    Grpc,
}

/// `application/grpc`, `application/grpc+proto`, `application/grpc;...`: gRPC over
/// HTTP/2 (the spec's "Requests" section); gRPC-Web (`application/grpc-web`) is not.
pub fn is_grpc_content_type(value: &[u8]) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    value.len() >= GRPC.len()
        && value[..GRPC.len()].eq_ignore_ascii_case(GRPC)
        && matches!(value.get(GRPC.len()), None | Some(b'+') | Some(b';'))
}

/// A condition on a named value (a cookie, a query parameter).
#[derive(Debug)]
pub enum ValueMatch {
    Present,
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl ValueMatch {
    fn accepts(&self, v: &[u8]) -> bool {
        match self {
            ValueMatch::Present => true,
            ValueMatch::Exact(want) => v == want.as_bytes(),
            ValueMatch::Prefix(p) => v.starts_with(p.as_bytes()),
            ValueMatch::Regex(re) => std::str::from_utf8(v).is_ok_and(|s| re.is_match(s)),
        }
    }
}

/// `match.cookie`: the cookie `name` (from any `Cookie` field) meets `value`, or,
/// inverted, does not (an absent cookie meets no condition).
#[derive(Debug)]
pub struct CookieMatcher {
    pub name: String,
    pub value: ValueMatch,
    pub invert: bool,
}

impl CookieMatcher {
    pub fn holds(&self, req: &impl RequestFacts) -> bool {
        let hit = req.any_header("cookie", |field| {
            crate::fields::cookie_value(field, &self.name).is_some_and(|v| self.value.accepts(v))
        });
        hit != self.invert
    }
}

/// `match.query`: the query parameter `name` (its first value, as sent) meets `value`.
#[derive(Debug)]
pub struct QueryMatcher {
    pub name: String,
    pub value: ValueMatch,
    pub invert: bool,
}

impl QueryMatcher {
    pub fn holds(&self, req: &impl RequestFacts) -> bool {
        let hit = crate::fields::query_value(req.query(), &self.name)
            .is_some_and(|v| self.value.accepts(v.as_bytes()));
        hit != self.invert
    }
}

impl HeaderMatcher {
    /// Whether the condition holds: some value of the field matches (a field sent twice,
    /// `x-tenant: ok` then `x-tenant: blocked`, matches `blocked`), or, inverted, none
    /// does.
    pub fn holds(&self, req: &impl RequestFacts) -> bool {
        let hit = req.any_header(&self.name, |v| match &self.kind {
            HeaderMatchKind::Present => true,
            HeaderMatchKind::Exact(want) => v == want.as_slice(),
            HeaderMatchKind::Grpc => is_grpc_content_type(v),
            HeaderMatchKind::Regex(re) => std::str::from_utf8(v)
                .map(|s| re.is_match(s))
                .unwrap_or(false),
        });
        hit != self.invert
    }
}

/// Route indices (into `RouteTable::routes`) that a request in one host bucket may match.
#[derive(Debug, Default)]
struct PathIndex {
    exact: HashMap<String, Vec<u32>>,
    prefixes: PrefixTrie,
    /// Routes with a regex path or no path condition: always candidates.
    scan: Vec<u32>,
}

#[derive(Debug, Default)]
struct PrefixTrie {
    nodes: Vec<TrieNode>,
}

#[derive(Debug, Default)]
struct TrieNode {
    /// Sorted by byte.
    children: Vec<(u8, u32)>,
    routes: Vec<u32>,
}

impl PrefixTrie {
    fn insert(&mut self, prefix: &str, route: u32) {
        if self.nodes.is_empty() {
            self.nodes.push(TrieNode::default());
        }
        let mut at = 0usize;
        for &b in prefix.as_bytes() {
            at = match self.nodes[at].children.binary_search_by_key(&b, |c| c.0) {
                Ok(i) => self.nodes[at].children[i].1 as usize,
                Err(i) => {
                    let next = self.nodes.len();
                    self.nodes.push(TrieNode::default());
                    self.nodes[at].children.insert(i, (b, next as u32));
                    next
                }
            };
        }
        self.nodes[at].routes.push(route);
    }

    /// Calls `f` with the routes of every stored prefix of `path`.
    fn for_each_prefix_of(&self, path: &str, mut f: impl FnMut(&[u32])) {
        let Some(mut node) = self.nodes.first() else {
            return;
        };
        f(&node.routes);
        for &b in path.as_bytes() {
            match node.children.binary_search_by_key(&b, |c| c.0) {
                Ok(i) => node = &self.nodes[node.children[i].1 as usize],
                Err(_) => return,
            }
            f(&node.routes);
        }
    }
}

impl PathIndex {
    fn add(&mut self, idx: u32, path: &PathMatch) {
        match path {
            PathMatch::Exact(p) => self.exact.entry(p.clone()).or_default().push(idx),
            PathMatch::Prefix(p) => self.prefixes.insert(p, idx),
            PathMatch::Any | PathMatch::Regex(_) => self.scan.push(idx),
        }
    }

    /// Smallest route index among the path candidates for which `accept` holds.
    fn first(&self, path: &str, accept: impl Fn(u32) -> bool) -> Option<u32> {
        let mut best: Option<u32> = None;
        let mut consider = |list: &[u32]| {
            // Lists are in file order: the first accepted entry is the list's best.
            for &i in list {
                if best.is_some_and(|b| i >= b) {
                    break;
                }
                if accept(i) {
                    best = Some(i);
                    break;
                }
            }
        };
        if let Some(list) = self.exact.get(path) {
            consider(list);
        }
        self.prefixes.for_each_prefix_of(path, &mut consider);
        consider(&self.scan);
        best
    }
}

#[derive(Debug, Default)]
pub struct RouteTable {
    pub routes: Vec<Arc<Route>>,
    exact_hosts: HashMap<String, PathIndex>,
    /// Keyed by suffix with its leading dot: `.example.com`.
    suffix_hosts: HashMap<String, PathIndex>,
    any_host: PathIndex,
}

impl RouteTable {
    pub fn new(routes: Vec<Arc<Route>>) -> RouteTable {
        let mut t = RouteTable {
            routes,
            ..Default::default()
        };
        let exact: Vec<String> = t
            .routes
            .iter()
            .filter_map(|r| match &r.host {
                HostMatch::Exact(h) => Some(h.clone()),
                _ => None,
            })
            .collect();
        let suffixes: Vec<String> = t
            .routes
            .iter()
            .filter_map(|r| match &r.host {
                HostMatch::Suffix(s) => Some(s.clone()),
                _ => None,
            })
            .collect();
        for (i, r) in t.routes.iter().enumerate() {
            let i = i as u32;
            for h in &exact {
                if host_matches(&r.host, h) {
                    t.exact_hosts.entry(h.clone()).or_default().add(i, &r.path);
                }
            }
            for s in &suffixes {
                // A host landing in bucket `s` ends with `s`, so it matches every
                // wildcard that `s` itself ends with.
                let fits = match &r.host {
                    HostMatch::Any => true,
                    HostMatch::Suffix(rs) => s.ends_with(rs.as_str()),
                    HostMatch::Exact(_) => false,
                };
                if fits {
                    t.suffix_hosts.entry(s.clone()).or_default().add(i, &r.path);
                }
            }
            if matches!(r.host, HostMatch::Any) {
                t.any_host.add(i, &r.path);
            }
        }
        t
    }

    /// The first route (in file order) that matches the request.
    pub fn find(&self, req: &impl RequestFacts) -> Option<&Arc<Route>> {
        let host = req.host();
        let bucket = self
            .exact_hosts
            .get(host)
            .or_else(|| self.most_specific_suffix(host))
            .unwrap_or(&self.any_host);
        let path = req.path();
        let idx = bucket.first(path, |i| self.routes[i as usize].rest_matches(req))?;
        self.routes.get(idx as usize)
    }

    fn most_specific_suffix(&self, host: &str) -> Option<&PathIndex> {
        if self.suffix_hosts.is_empty() {
            return None;
        }
        host.match_indices('.')
            .find_map(|(i, _)| self.suffix_hosts.get(&host[i..]))
    }
}

fn host_matches(m: &HostMatch, host: &str) -> bool {
    match m {
        HostMatch::Any => true,
        HostMatch::Exact(h) => h == host,
        HostMatch::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
    }
}

impl Route {
    /// Conditions not covered by the host / path index: method, headers, cookies,
    /// query parameters, regex path.
    fn rest_matches(&self, req: &impl RequestFacts) -> bool {
        if let PathMatch::Regex(re) = &self.path {
            if !re.is_match(req.path()) {
                return false;
            }
        }
        if let Some(m) = &self.method {
            if m.as_bytes() != req.method() {
                return false;
            }
        }
        self.headers.iter().all(|h| h.holds(req))
            && self.cookies.iter().all(|c| c.holds(req))
            && self.query.iter().all(|q| q.holds(req))
    }
}
