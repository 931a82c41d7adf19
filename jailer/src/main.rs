//! minipc-jailer: confines a minipc process (work in progress; see jailer/README.md).
fn main() {
    eprintln!("minipc-jailer: not built yet");
    std::process::exit(2);
}
