//! keyward's integration and interoperability tests, one module per area,
//! linked into one test binary. Every test runs in its own process with its
//! own SoftHSM2 token and agent (see `keyward_tests::harness`).
//!
//! ```text
//! cargo build --workspace
//! cargo test -p keyward-tests                                   # everything
//! cargo test -p keyward-tests --test integration key_enforcement::   # one module
//! ```

mod admin_guide;
mod admin_results;
mod agent_restart;
mod approvals_cli;
mod attribute_rules;
mod audit;
mod audit_anchor;
mod audit_apps;
mod audit_crash;
mod audit_events;
mod audit_gap;
mod backend_faults;
mod backup;
mod boundary;
mod certificates;
mod clock;
mod crypto;
mod derived_keys;
mod destroy_requests;
mod disk_full;
mod distribution;
mod dual_control;
mod envelope;
mod escrow_cli;
mod faults;
mod fleet;
mod fleet_inventory;
mod fleet_store;
mod fleet_trail;
mod fork_process;
mod general;
mod generation;
mod generation_crash;
mod install;
mod interop_gnutls;
mod interop_java;
mod interop_nss;
mod interop_openssl;
mod interop_openssl_strict;
mod interop_osslsigncode;
mod interop_pkcs11_tool;
mod interop_python;
mod interop_ssh;
mod json_contract;
mod key_enforcement;
mod key_integrity;
mod key_verify;
mod keys;
mod kill_load;
mod lifecycle;
mod lifecycle_crash;
mod mechanism_params;
mod metrics;
mod names;
mod namespaces;
mod objects;
mod per_use;
mod pins;
mod policy;
mod policy_standards;
mod reasons;
mod recovery;
mod refusals;
mod remote_tls;
mod report;
mod safety_rails;
mod sessions_login;
mod slots_tokens;
mod soak;
mod status_policy;
mod token_init;
mod versions;
mod webhook;
mod wire;
