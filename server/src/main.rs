//! The `zonestore` binary. Not written yet: it says so and exits with an error.

fn main() {
    eprintln!("zonestore: the server is not built yet; see README.md for what works today");
    std::process::exit(2);
}
