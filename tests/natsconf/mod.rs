//! A reader for the nats-server configuration syntax that jetsched's
//! deployment files use, so tests can check what a config says (nats-server
//! itself only answers "valid" or not, with `-t`).

use std::collections::BTreeMap;

/// A value in a nats-server configuration file.
#[derive(Debug, Clone, PartialEq)]
pub enum Conf {
    Map(BTreeMap<String, Conf>),
    List(Vec<Conf>),
    Text(String),
}

impl Conf {
    /// The value at `path` (lower-case keys), if there is one.
    pub fn get(&self, path: &[&str]) -> Option<&Conf> {
        path.iter().try_fold(self, |conf, key| match conf {
            Conf::Map(map) => map.get(*key),
            _ => None,
        })
    }

    /// The text at `path`, if there is text there.
    pub fn text(&self, path: &[&str]) -> Option<&str> {
        match self.get(path)? {
            Conf::Text(t) => Some(t),
            _ => None,
        }
    }
}

/// Reads `key: value` / `key = value` / `key { ... }` maps, `[...]` lists,
/// quoted and bare values, `#` and `//` comments. Keys are case-insensitive
/// in nats-server, so they are kept lower-case.
pub struct ConfReader {
    chars: Vec<char>,
    pos: usize,
}

impl ConfReader {
    /// Reads a whole file; panics, naming the place, on what it cannot read.
    pub fn parse(text: &str) -> Conf {
        let mut reader = ConfReader { chars: text.chars().collect(), pos: 0 };
        let conf = reader.map(None);
        assert_eq!(reader.pos, reader.chars.len(), "config: unread text");
        conf
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn skip_blank(&mut self) {
        while let Some(c) = self.peek() {
            let comment = c == '#' || (c == '/' && self.chars.get(self.pos + 1) == Some(&'/'));
            if comment {
                while self.peek().is_some_and(|c| c != '\n') {
                    self.pos += 1;
                }
            } else if c.is_whitespace() || c == ',' || c == ';' {
                self.pos += 1;
            } else {
                return;
            }
        }
    }

    fn word(&mut self, stop: impl Fn(char) -> bool) -> String {
        let start = self.pos;
        while self.peek().is_some_and(|c| !c.is_whitespace() && !stop(c)) {
            self.pos += 1;
        }
        self.chars[start..self.pos].iter().collect()
    }

    fn map(&mut self, close: Option<char>) -> Conf {
        let mut map = BTreeMap::new();
        loop {
            self.skip_blank();
            match self.peek() {
                None => {
                    assert!(close.is_none(), "config: unclosed map");
                    return Conf::Map(map);
                }
                Some(c) if Some(c) == close => {
                    self.pos += 1;
                    return Conf::Map(map);
                }
                Some(_) => {}
            }
            let key = self.word(|c| matches!(c, ':' | '=' | '{' | '[')).to_lowercase();
            assert!(!key.is_empty(), "config: expected a key at character {}", self.pos);
            while self.peek().is_some_and(|c| c == ' ' || c == '\t') {
                self.pos += 1;
            }
            if matches!(self.peek(), Some(':' | '=')) {
                self.pos += 1;
            }
            let value = self.value();
            map.insert(key, value);
        }
    }

    fn value(&mut self) -> Conf {
        self.skip_blank();
        match self.peek() {
            Some('{') => {
                self.pos += 1;
                self.map(Some('}'))
            }
            Some('[') => {
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    self.skip_blank();
                    if self.peek() == Some(']') {
                        self.pos += 1;
                        return Conf::List(items);
                    }
                    assert!(self.peek().is_some(), "config: unclosed list");
                    items.push(self.value());
                }
            }
            Some(quote @ ('"' | '\'')) => {
                self.pos += 1;
                let text = self.word(|c| c == quote);
                assert_eq!(self.peek(), Some(quote), "config: unclosed string");
                self.pos += 1;
                Conf::Text(text)
            }
            _ => Conf::Text(self.word(|c| matches!(c, ',' | ';' | ']' | '}' | '#'))),
        }
    }
}

#[test]
fn conf_reader_reads_the_syntax_the_files_use() {
    let conf = ConfReader::parse(
        "# c\nServer_Name: $N\nlisten = 0.0.0.0:4222 // c\njetstream {\n  sync_interval: always\n}\n\
         cluster { routes: [\n nats://a:6222, nats://b:6222\n] }\nwrite_deadline: \"10s\"\n",
    );
    assert_eq!(conf.text(&["server_name"]), Some("$N"));
    assert_eq!(conf.text(&["listen"]), Some("0.0.0.0:4222"));
    assert_eq!(conf.text(&["jetstream", "sync_interval"]), Some("always"));
    assert_eq!(
        conf.get(&["cluster", "routes"]),
        Some(&Conf::List(vec![Conf::Text("nats://a:6222".into()), Conf::Text("nats://b:6222".into())]))
    );
    assert_eq!(conf.text(&["write_deadline"]), Some("10s"));
}
