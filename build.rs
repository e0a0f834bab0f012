//! Records the candle version this binary was built with (for each stage's provenance).

fn main() {
    println!("cargo:rerun-if-changed=Cargo.lock");
    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    let mut version = "unknown".to_string();
    let mut in_candle = false;
    for line in lock.lines() {
        if line.starts_with("name = ") {
            in_candle = line == "name = \"candle-core\"";
        } else if in_candle && line.starts_with("version = ") {
            version = line
                .trim_start_matches("version = ")
                .trim_matches('"')
                .to_string();
            break;
        }
    }
    println!("cargo:rustc-env=ABLATE_CANDLE_VERSION={version}");
}
