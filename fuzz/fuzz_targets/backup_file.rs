//! The backup file's parser as `keyward backup restore` and `verify` run
//! it before the seal check: header, lengths, body. Invariants: no panic;
//! a file that decodes, encoded again, decodes to the same file.
#![no_main]

use keyward_agent::lifecycle::backup::decode_backup_file;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(again) = decode_backup_file(data) {
        let twice = decode_backup_file(&again).expect("a re-encoded backup file decodes");
        assert_eq!(
            twice, again,
            "decode -> encode -> decode changed the backup"
        );
    }
});
