// wordcount: a plain Rust WASI command (no crates) that counts the words on stdin with
// std::collections::HashMap and prints "COUNT WORD" lines, most frequent first (ties by word).
//
// HashMap's default hasher (RandomState) seeds itself from WASI random_get, and std's
// runtime imports the clock too: the module runs under WasmMatrix's default grants
// (clocks and random are granted unless denied, issue 12) and is refused with
// --no-random. Built by examples/build.sh with:
//   rustc --target wasm32-wasi -O -C strip=symbols examples/wasm/wordcount.rs
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::time::SystemTime;

fn main() {
    let mut text = String::new();
    if let Err(err) = io::stdin().read_to_string(&mut text) {
        eprintln!("wordcount: cannot read stdin: {err}");
        std::process::exit(2);
    }
    let mut counts: HashMap<String, u64> = HashMap::new();
    for word in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
        *counts.entry(word.to_lowercase()).or_insert(0) += 1;
    }
    let mut rows: Vec<(&String, &u64)> = counts.iter().collect();
    rows.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    let out = io::stdout();
    let mut out = out.lock();
    for (word, n) in rows {
        writeln!(out, "{n} {word}").expect("stdout");
    }
    // Reads the wall clock (WASI clock_time_get); printed on stderr so stdout stays deterministic.
    let secs = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    eprintln!("wordcount: {} distinct words at unix time {secs}", counts.len());
}
