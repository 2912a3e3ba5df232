//! Any text as the daemon's TOML config: parsing and validation must never panic (they
//! may refuse it, naming the field).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(config) = toml::from_str::<ferry::config::Config>(text)
    {
        let _ = config.validate();
    }
});
