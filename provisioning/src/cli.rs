//! The command line: clap definitions and the value parsers that turn
//! arguments into protocol values (times, CKA_IDs, operations, states).
//! Anything refused here is a usage error: clap prints it and exits 2.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::signer::KeySource;
use crate::time;

/// Printed after `keyward --help`; the same table is in `main.rs`'s docs
/// and in [`crate::admin::Exit`].
const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the agent is unreachable, speaks no admin-protocol version in common, or answered something unexpected
     (`policy check`: the file is not valid)
  2  invalid request or usage
  3  the action needs approval: a request was recorded (its id is printed)
  4  not found (key, token, application, class)
  5  refused by policy or by the key's lifecycle
  6  conflict with the current state (name taken, raced)
  7  the HSM or the inventory store failed
  8  the audit trail does not verify (`audit verify` found tampering)
  9  the audit trail no longer holds an anchored head (`audit verify
     --anchor`: rolled back past it, or rewritten below it)

With --json, standard output carries exactly one JSON document, also when
the command fails ({\"error\": {\"kind\", \"message\", \"exit_code\"}});
times are RFC 3339 UTC strings, mechanisms and return values their names
(the schemas: docs/json/);
`audit tail` and `audit query` print JSON lines instead (one record per
line; a failure is one error line). Messages for people go to standard
error as `keyward: ...`.";

/// keyward: administer a keyward agent.
#[derive(Debug, Parser)]
#[command(name = "keyward", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// The agent's admin socket (else $KEYWARD_ADMIN_SOCKET, else /run/keyward/admin.sock).
    #[arg(long, global = true, value_name = "PATH")]
    pub admin_socket: Option<PathBuf>,
    /// Print one JSON document instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Show every column of every table at full length (by default tables
    /// fit 100 columns: the essential columns, long values cut with `…`).
    #[arg(long, global = true)]
    pub wide: bool,
    /// Show times in the system's time zone (TZ, else /etc/localtime) with
    /// their offset, `2026-12-04 21:21:07+01:00` (by default: UTC, `...Z`).
    #[arg(long, global = true)]
    pub local: bool,
    /// Change nothing: the agent runs every check of the command and says what it would do
    /// (and, for revoke, destroy and restore, who loses what). Exit 0, or the exit code the
    /// command itself would give when it is refused.
    #[arg(long, global = true)]
    pub dry_run: bool,
    /// Confirm revoke, destroy and backup restore without being asked (needed when not on a
    /// terminal: scripts).
    #[arg(long, global = true)]
    pub yes: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the agent's version, uptime and tokens with their backends.
    Status,
    /// Set up dual control on a deployment that has none yet: the policy
    /// file (with its `[[administrator]]` roster) is written and put in force
    /// at once as the first approved policy. Refused once a roster was
    /// approved; from then on `keyward policy apply` changes the policy,
    /// under quorum.
    Init {
        /// The first policy file with the roster.
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        /// Why (kept in the audit trail).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Work with policy files.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Create, inspect and move managed keys through their lifecycle.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Give applications operations on keys, or take them away.
    Grant {
        #[command(subcommand)]
        command: GrantCommand,
    },
    /// The policy's applications.
    App {
        #[command(subcommand)]
        command: AppCommand,
    },
    /// Virtual token PINs.
    Pin {
        #[command(subcommand)]
        command: PinCommand,
    },
    /// Virtual tokens as a whole.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Approval requests: actions that wait for a second person.
    Request {
        #[command(subcommand)]
        command: RequestCommand,
    },
    /// An administrator's signing key (dual control).
    AdminKey {
        #[command(subcommand)]
        command: AdminKeyCommand,
    },
    /// List backend keys the inventory does not know (shadow keys), or adopt one.
    Discover(DiscoverArgs),
    /// Read the audit trail and check that nobody altered it.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Keys against their class (age, rotation, certificate, drift), usage and its anomalies,
    /// export attempts, revocation latency, failed admin actions.
    Report(ReportArgs),
    /// Backups and the backup key's split knowledge (custodians' shares).
    Backup {
        #[command(subcommand)]
        command: BackupCommand,
    },
    /// List the USB security devices (HSMs, security keys, smart-card tokens)
    /// connected to this machine. Runs locally; needs no agent.
    Devices,
    /// Print the completion script for a shell (the install step runs it).
    #[command(hide = true)]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Write the manual pages to DIR (without DIR: keyward.1 on standard output).
    #[command(hide = true)]
    Man {
        /// Where the pages go.
        dir: Option<PathBuf>,
    },
    /// Certificates of managed keys: requests (CSRs) and self-signed
    /// certificates signed in the HSM, and certificate imports.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
}

/// `keyward completions SHELL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    /// bash
    Bash,
    /// zsh
    Zsh,
    /// fish
    Fish,
}

/// What a certificate is made of: the key, the subject and its names.
#[derive(Debug, Args, Clone, PartialEq, Eq)]
pub struct CertSubjectArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    /// The subject, e.g. "CN=web.example.com,O=Example" (RFC 4514).
    #[arg(long)]
    pub subject: String,
    /// Subject alternative names, comma-separated: DNS:name, IP:address,
    /// email:address, URI:uri.
    #[arg(long, value_delimiter = ',')]
    pub san: Vec<String>,
    /// The key version (default: the one that protects now).
    #[arg(long)]
    pub version: Option<u32>,
    /// Write it to this new file (mode 0600) instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// DER instead of PEM (needs --out).
    #[arg(long, requires = "out")]
    pub der: bool,
}

/// `keyward cert ...`
#[derive(Debug, Subcommand, Clone, PartialEq, Eq)]
pub enum CertCommand {
    /// A PKCS#10 certificate signing request of a key version, signed in
    /// the HSM (PEM, or DER with --der).
    Request(CertSubjectArgs),
    /// A self-signed X.509 v3 certificate of a key version, signed in the HSM.
    SelfSign {
        #[command(flatten)]
        args: CertSubjectArgs,
        /// Validity from now: a number of days (365), or a duration in whole days
        /// (90d, 2w, 1y = 365 days).
        #[arg(long, visible_alias = "valid-for", value_name = "DAYS|DURATION",
              default_value = "365", value_parser = parse_days)]
        days: u32,
        /// Store it on the token beside the key version too.
        #[arg(long)]
        import: bool,
    },
    /// Store a certificate (one, PEM or DER) of a key version's public key
    /// on the token, where applications find it beside the key.
    Import {
        #[command(flatten)]
        key: KeyArgs,
        /// The certificate file.
        file: PathBuf,
        /// The key version (default: the one that protects now).
        #[arg(long)]
        version: Option<u32>,
        /// Replace the certificate the version has.
        #[arg(long)]
        replace: bool,
    },
}

/// `keyward backup ...`
#[derive(Debug, Subcommand, Clone, PartialEq, Eq)]
pub enum BackupCommand {
    /// A custodian's identity for the backup key's shares (runs locally).
    CustodianKey {
        #[command(subcommand)]
        command: CustodianKeyCommand,
    },
    /// A custodian's share of the backup key.
    Share {
        #[command(subcommand)]
        command: ShareCommand,
    },
    /// Ask for the backup key's ceremony (quorum `backup-init`): a new backup key in the HSM,
    /// split at once into shares for the roster's custodians, THRESHOLD of which rebuild it.
    Init {
        /// How many custodians' shares rebuild the backup key (at least 2).
        #[arg(long)]
        threshold: u8,
        /// Why (kept with the request and in the audit trail).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        token: TokenArg,
    },
    /// The backup key, its custodians and their shares' digests.
    Status {
        #[command(flatten)]
        token: TokenArg,
    },
    /// Write a backup to FILE (mode 0600, never over an existing file): every key version
    /// whose class allows backup, wrapped by the backup key, sealed in the HSM.
    Create {
        /// The backup file to create.
        file: PathBuf,
        #[command(flatten)]
        token: TokenArg,
    },
    /// Ask for the restore of a backup file (quorum `backup-restore`); conflicts with newer
    /// inventory state are shown and refused.
    Restore {
        /// The backup file.
        file: PathBuf,
        /// Why (kept with the request and in the audit trail).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        token: TokenArg,
    },
    /// A drill: every key of the backup unwrapped into session objects and proven to work;
    /// nothing of the token or the inventory changes. Exit 0 when every key works.
    Verify {
        /// The backup file.
        file: PathBuf,
        #[command(flatten)]
        token: TokenArg,
    },
}

/// `keyward backup custodian-key ...`
#[derive(Debug, Subcommand, Clone, PartialEq, Eq)]
pub enum CustodianKeyCommand {
    /// Make a new age identity, written to FILE (mode 0600, never over an existing file),
    /// and print the roster's `share_recipient = "age1..."` line.
    New {
        /// The identity file to create; keep it secret (it opens your share).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

/// `keyward backup share ...`
#[derive(Debug, Subcommand, Clone, PartialEq, Eq)]
pub enum ShareCommand {
    /// Open your share with your identity and show what it is (custodian, index, threshold,
    /// deployment, the backup key's check value, the share's digest), never its value.
    Check {
        /// The share file (armored age) the backup ceremony gave you.
        share: PathBuf,
        /// Your identity file (`keyward backup custodian-key new`).
        #[arg(long, value_name = "FILE")]
        identity: PathBuf,
    },
    /// Fetch your share (still encrypted to you) from the agent into FILE.
    Get {
        /// The share file to create (never over an existing file).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Another custodian's share (a security officer handing shares out).
        #[arg(long, value_name = "NAME")]
        custodian: Option<String>,
        #[command(flatten)]
        token: TokenArg,
    },
    /// Open your share with your identity and submit it to the agent, towards rebuilding the
    /// backup key on a token that has none (a new HSM). The share is opened here; only the
    /// agent sees its value.
    Submit {
        /// Your share file (armored age).
        share: PathBuf,
        /// Your identity file.
        #[arg(long, value_name = "FILE")]
        identity: PathBuf,
        #[command(flatten)]
        token: TokenArg,
    },
}

/// `keyward policy ...`
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check a policy file; exit 0 when valid, 1 with `FILE:LINE:COL: field: problem` when not (or, with --strict, when a cryptoperiod is longer than recommended).
    Check {
        /// The policy file.
        file: PathBuf,
        /// Also refuse (exit 1) a cryptoperiod longer than NIST SP 800-57
        /// Part 1 recommends for the class's purpose, which is otherwise a
        /// note.
        #[arg(long)]
        strict: bool,
    },
    /// Show the policy in force: its file, mode, SHA-256, what it names, and its text.
    Show,
    /// Read the agent's configuration again and put its policy in force (what SIGHUP does);
    /// refused, with the reason, when the file does not check or dual control keeps the
    /// approved policy.
    Reload,
    /// Put a policy file in force. With a roster in the policy in force, this
    /// opens a request under the policy-apply quorum that shows the
    /// difference (exit 3 with its id); without one, the agent writes its
    /// policy file and puts it in force at once.
    Apply {
        /// The new policy file (checked by the agent before anything else).
        file: PathBuf,
        /// Why (kept with the request and in the audit trail).
        #[arg(long)]
        reason: Option<String>,
    },
}

/// `--token T`: the virtual token; the agent's first token when absent.
#[derive(Debug, Args, Clone, PartialEq, Eq)]
pub struct TokenArg {
    /// Virtual token label (default: the agent's first token).
    #[arg(long, value_name = "LABEL")]
    pub token: Option<String>,
}

/// A key name and its token.
#[derive(Debug, Args, Clone, PartialEq, Eq)]
pub struct KeyArgs {
    /// Key name.
    pub name: String,
    #[command(flatten)]
    pub token: TokenArg,
}

/// `keyward key rotate`: the key, and the certificate request of the new
/// version to write after.
#[derive(Debug, Args, Clone, PartialEq, Eq)]
pub struct RotateArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    /// After rotating, write a certificate request (PEM) of the new version
    /// to this new file (subject: --subject, else the current certificate's).
    #[arg(long, value_name = "FILE")]
    pub csr: Option<PathBuf>,
    /// The CSR's subject (RFC 4514).
    #[arg(long, requires = "csr")]
    pub subject: Option<String>,
    /// The CSR's subject alternative names (as for `keyward cert request`).
    #[arg(long, value_delimiter = ',', requires = "csr")]
    pub san: Vec<String>,
}

/// A lifecycle transition: the key and why.
#[derive(Debug, Args, Clone, PartialEq, Eq)]
pub struct TransitionArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    /// Why (recorded in the key's history).
    #[arg(long)]
    pub reason: Option<String>,
}

/// `key suspend`: the key, why, and the RFC 5280 reason code.
#[derive(Debug, Args, Clone, PartialEq, Eq)]
pub struct SuspendArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    /// Why (required, not blank; kept in the key's history and the audit trail).
    #[arg(long, value_parser = parse_reason)]
    pub reason: String,
    /// The RFC 5280 reason code kept with the suspension (any case, or
    /// kebab-case: key-compromise).
    #[arg(long = "reason-code", value_name = "CODE", default_value = "certificateHold",
          value_parser = parse_reason_code)]
    pub code: keyward_policy::ReasonCode,
}

/// `key revoke` and `key destroy`, which are final: the key, why, and the
/// RFC 5280 reason code.
#[derive(Debug, Args, Clone, PartialEq, Eq)]
pub struct RetireArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    /// Why (required, not blank; kept in the key's history and the audit trail).
    #[arg(long, value_parser = parse_reason)]
    pub reason: String,
    /// The RFC 5280 reason code (required): unspecified, keyCompromise, cACompromise,
    /// affiliationChanged, superseded, cessationOfOperation, privilegeWithdrawn,
    /// aACompromise (any case, or kebab-case: key-compromise). Not certificateHold:
    /// that is a suspension.
    #[arg(long = "reason-code", value_name = "CODE", value_parser = parse_final_code)]
    pub code: keyward_policy::ReasonCode,
}

/// `keyward key ...`
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Show a key version's public key as a SubjectPublicKeyInfo (PEM, or DER with --der).
    Pubkey {
        #[command(flatten)]
        key: KeyArgs,
        /// The version (default: the one that protects now).
        #[arg(long)]
        version: Option<u32>,
        /// DER instead of PEM (needs --out).
        #[arg(long, requires = "out")]
        der: bool,
        /// Write it to this file instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Ask for a key version wrapped for a recipient's RSA public key
    /// (always needs approval, quorum backup-export); once approved,
    /// `--collect REQUEST-ID --out FILE` writes the export file.
    Export {
        /// Key name.
        #[arg(required_unless_present = "collect", conflicts_with = "collect")]
        name: Option<String>,
        #[command(flatten)]
        token: TokenArg,
        /// The version (default: the one that protects now).
        #[arg(long, conflicts_with = "collect")]
        version: Option<u32>,
        /// The recipient's RSA public key (2048 bits or more), PEM or DER
        /// (typically `keyward key pubkey` of a wrapping key on the receiving side).
        #[arg(
            long,
            value_name = "RECIPIENT.pem",
            required_unless_present = "collect",
            conflicts_with = "collect"
        )]
        to: Option<PathBuf>,
        /// Why (kept with the request).
        #[arg(long, required_unless_present = "collect", conflicts_with = "collect")]
        reason: Option<String>,
        /// Collect the export file of this approved and carried-out request.
        #[arg(long, value_name = "REQUEST-ID", requires = "out")]
        collect: Option<String>,
        /// Where --collect writes the file (created, mode 0600; never overwritten).
        #[arg(long, value_name = "FILE", requires = "collect")]
        out: Option<PathBuf>,
    },
    /// Unwrap an export file into the HSM as a new managed key of a class.
    Import {
        /// The export file.
        file: PathBuf,
        /// Key class it joins (its purpose and algorithms must fit the key).
        #[arg(long)]
        class: String,
        /// Name to give it (default: the name it had).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        token: TokenArg,
        /// Why (recorded with its provenance).
        #[arg(long)]
        reason: String,
        /// The file's SHA-256 as the exporting side's request outcome
        /// shows it (hex); a file with another digest is not sent.
        #[arg(long, value_name = "HEX")]
        sha256: Option<String>,
    },
    /// Generate a managed key inside the HSM from a key class.
    Create {
        /// Unique name on the token; also the objects' CKA_LABEL.
        name: String,
        /// Key class of the policy.
        #[arg(long)]
        class: String,
        /// One of the class's algorithms (ec:p256, rsa:3072, ...; default: the class's first).
        #[arg(long)]
        algorithm: Option<String>,
        #[command(flatten)]
        token: TokenArg,
        /// Owner recorded in the inventory (default: the requester).
        #[arg(long)]
        owner: Option<String>,
    },
    /// List managed keys.
    List {
        #[command(flatten)]
        token: TokenArg,
        /// Only keys in this state (pre-activation, active, suspended, deactivated, compromised, destroyed).
        #[arg(long, value_parser = parse_state)]
        state: Option<keyward_policy::KeyState>,
    },
    /// Show one key: versions (with CKA_ID), grants and state history.
    Show(KeyArgs),
    /// pre-activation → active.
    Activate(TransitionArgs),
    /// active → suspended (reason code certificateHold unless given).
    Suspend(SuspendArgs),
    /// suspended → active (needs approval).
    Resume(TransitionArgs),
    /// → deactivated: verify/decrypt/unwrap only, until the process period ends.
    Deactivate(TransitionArgs),
    /// Remove the key's HSM objects, keep its record (needs approval).
    Destroy(RetireArgs),
    /// → compromised: the key stops working at once, whatever the reason code.
    Revoke {
        #[command(flatten)]
        transition: RetireArgs,
        /// Emergency rotation: a fresh version replaces the key in the same step.
        #[arg(long)]
        rotate: bool,
    },
    /// Generate a new version: it protects, older versions drop to deactivated.
    /// With --csr, then write a certificate request (PEM) of the new version.
    Rotate(RotateArgs),
    /// Prove the key works inside the HSM without revealing anything.
    Verify(KeyArgs),
    /// Ask for a recovery window on a compromised key: for a bounded time,
    /// applications granted verify or decrypt may do those again (never
    /// sign or encrypt). Always needs approval (quorum recovery-window).
    Recover {
        #[command(flatten)]
        key: KeyArgs,
        /// How long the window stays open from now: 30m, 8h, 7d, 1.5h (at most the
        /// class's max_recovery_window, 30d by default).
        #[arg(long = "for", id = "for_", value_name = "DURATION", value_parser = parse_period)]
        for_: Duration,
        /// Why (kept with the request).
        #[arg(long)]
        reason: String,
    },
}

/// `keyward grant ...`
#[derive(Debug, Subcommand)]
pub enum GrantCommand {
    /// Give an application operations on a key, optionally for a limited time.
    Add {
        /// Key name.
        key: String,
        /// Application name of the policy.
        application: String,
        /// Operations, comma-separated: sign, verify, encrypt, decrypt, wrap, unwrap, derive, digest.
        #[arg(long, required = true, value_delimiter = ',', value_parser = parse_operation)]
        ops: Vec<keyward_policy::Operation>,
        /// Until this time: RFC 3339 (2026-12-01T00:00:00Z), a date (2026-12-01,
        /// midnight UTC) or a duration counted forward from now (7d: in seven days).
        #[arg(long, value_name = "TIME", value_parser = time::parse_future, conflicts_with = "for_")]
        until: Option<i64>,
        /// For this long from now: 30m, 8h, 7d, 1y, 1.5h, 1w2d (units s m h d w y;
        /// d = 24 h, y = 365 d).
        #[arg(long = "for", id = "for_", value_name = "DURATION", value_parser = parse_period)]
        for_: Option<Duration>,
        #[command(flatten)]
        token: TokenArg,
    },
    /// Take an application's grant on a key away.
    Remove {
        /// Key name.
        key: String,
        /// Application name.
        application: String,
        #[command(flatten)]
        token: TokenArg,
    },
    /// Grants of one key, or of every key.
    List {
        /// Key name (default: every key).
        key: Option<String>,
        #[command(flatten)]
        token: TokenArg,
    },
}

/// `keyward app ...`
#[derive(Debug, Subcommand)]
pub enum AppCommand {
    /// The policy's applications and the keys they hold grants on.
    List,
}

/// `keyward request ...`
#[derive(Debug, Subcommand)]
pub enum RequestCommand {
    /// The pending requests (with --all, every request).
    List {
        /// Every request, whatever its status.
        #[arg(long)]
        all: bool,
    },
    /// One request: its action, target, parameters, requester, reason, status, expiry,
    /// decisions, and the digest an approval signs.
    Show {
        /// The request's id (as `keyward key ...` printed it).
        id: String,
    },
    /// Approve a pending request: shows it in full (with the digest computed here), signs the
    /// decision with --key and sends it.
    Approve(DecideArgs),
    /// Deny a pending request (signed like an approval).
    Deny(DecideArgs),
    /// Withdraw a pending request (its requester or a security officer).
    Cancel {
        /// The request's id.
        id: String,
        /// Why (recorded).
        #[arg(long)]
        reason: Option<String>,
    },
}

/// `keyward request approve|deny ID [--key K [--module PATH]]`
#[derive(Debug, Args, Clone, PartialEq, Eq)]
pub struct DecideArgs {
    /// The request's id.
    pub id: String,
    /// Your private key: a PEM file only you can read (Ed25519 or P-256), or a
    /// pkcs11: URI of a key on your token (PIN: the URI's pin-source=file:..., else
    /// $KEYWARD_ADMIN_PIN, else asked on the terminal). Without it the decision is
    /// sent unsigned, which only an agent without a roster accepts.
    #[arg(long, value_name = "FILE|pkcs11:URI", value_parser = parse_key)]
    pub key: Option<KeySource>,
    /// The PKCS#11 library for a pkcs11: URI without module-path=.
    #[arg(long, value_name = "PATH", requires = "key")]
    pub module: Option<PathBuf>,
}

/// `keyward admin-key ...`
#[derive(Debug, Subcommand, Clone, PartialEq, Eq)]
pub enum AdminKeyCommand {
    /// Print the public key of your private key as the roster's `public_key = "..."` line
    /// (a token's public key object is read without a PIN).
    Show {
        /// A PEM private key file, or a pkcs11: URI.
        #[arg(value_name = "FILE|pkcs11:URI", value_parser = parse_key)]
        key: KeySource,
        /// The PKCS#11 library for a pkcs11: URI without module-path=.
        #[arg(long, value_name = "PATH")]
        module: Option<PathBuf>,
    },
}

/// `keyward pin ...`
#[derive(Debug, Subcommand)]
pub enum PinCommand {
    /// Reset a token's wrong-PIN counter after a lockout.
    Unlock {
        /// Virtual token label.
        token: String,
        /// Only this role's counters (default: user and SO).
        #[arg(long, value_enum)]
        role: Option<PinRoleArg>,
        /// Only this application's user PIN counter (strict mode: each
        /// application has its own).
        #[arg(long = "app", value_name = "NAME")]
        application: Option<String>,
    },
}

/// `keyward token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Re-initialise a token: every managed key on it is destroyed (the
    /// inventory keeps its record), every other object but the audit key is
    /// removed, the user PINs are cleared (the SO PIN and the label stay).
    /// Always needs approval (quorum token-init): exit 3 with the request's
    /// id, which lists the keys lost.
    Init {
        /// Virtual token label.
        token: String,
        /// Why (kept with the request).
        #[arg(long)]
        reason: String,
    },
}

/// `--role` of `keyward pin unlock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PinRoleArg {
    /// The user PIN (the token's and every application's).
    User,
    /// The security officer's PIN.
    So,
}

/// `keyward discover [--adopt ID --name N --class C]`
#[derive(Debug, Args, Clone, PartialEq, Eq)]
pub struct DiscoverArgs {
    /// Virtual token label (default: every token; for --adopt: the agent's first token).
    #[arg(long, value_name = "LABEL")]
    pub token: Option<String>,
    /// Adopt the shadow key with this CKA_ID (hex, as `discover` lists it).
    #[arg(long, value_name = "CKA_ID_HEX", value_parser = parse_hex, requires_all = ["name", "class"])]
    pub adopt: Option<CkaId>,
    /// Name to give the adopted key.
    #[arg(long, requires = "adopt")]
    pub name: Option<String>,
    /// Key class the adopted key joins.
    #[arg(long, requires = "adopt")]
    pub class: Option<String>,
}

/// `keyward audit ...`
#[derive(Debug, Subcommand, Clone, PartialEq, Eq)]
pub enum AuditCommand {
    /// Recompute the hash chain and check every signed checkpoint; exit 0 when intact, 8 when not.
    ///
    /// With --anchor, also prove that the trail still holds every anchor in
    /// FILE (`-`: standard input; one per line, as `audit anchor` prints
    /// them or syslog received them); exit 9 when it was rolled back past
    /// one or rewritten below one.
    Verify {
        /// Anchors kept off the host: `keyward-anchor 1 seq=N head=HEX time=N sig=HEX` lines.
        #[arg(long, value_name = "FILE|-")]
        anchor: Option<PathBuf>,
    },
    /// Seal the trail (a checkpoint, when records came since the last) and print the
    /// latest sealed head, one line to keep off the host for `audit verify --anchor`.
    Anchor,
    /// The newest records; with --json one JSON object per line (for SIEM export).
    Tail {
        /// How many records.
        #[arg(short = 'n', long = "lines", value_name = "N", default_value_t = 20,
              value_parser = clap::value_parser!(u32).range(1..))]
        n: u32,
        /// Keep printing new records as they are written (polls every 500 ms) until interrupted.
        #[arg(long)]
        follow: bool,
    },
    /// Records matching every criterion given; with --json one JSON object per line.
    Query(AuditQueryArgs),
}

/// `keyward audit query`'s criteria.
#[derive(Debug, Args, Clone, PartialEq, Eq)]
pub struct AuditQueryArgs {
    /// Only records of this key.
    #[arg(long, value_name = "NAME")]
    pub key: Option<String>,
    /// Only records of this application.
    #[arg(long = "app", value_name = "APPLICATION")]
    pub application: Option<String>,
    /// From this time on (inclusive): RFC 3339 (2026-01-31T00:00:00Z), a date
    /// (2026-01-31, midnight UTC) or a duration counted back from now (1h: an hour ago).
    #[arg(long, value_name = "TIME", value_parser = time::parse_past)]
    pub since: Option<i64>,
    /// Before this time (exclusive), in the same forms; a duration counts back
    /// from now too (--since 2d --until 1d: the day before yesterday's 24 hours).
    #[arg(long, value_name = "TIME", value_parser = time::parse_past)]
    pub until: Option<i64>,
    /// Which results to show.
    #[arg(long, value_enum, value_name = "RESULT", default_value_t = ResultFilter::Any)]
    pub result: ResultFilter,
    /// At most this many records (printed oldest first).
    #[arg(long, value_name = "N", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
}

/// `keyward report`'s options.
#[derive(Debug, Args, Clone, PartialEq, Eq)]
pub struct ReportArgs {
    /// The recent period judged: 30s, 15m, 1.5h, 7d, 1y (units s m h d w y;
    /// d = 24 h, y = 365 d).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_period)]
    pub window: Duration,
    /// The history before the window that it is judged against.
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = parse_period)]
    pub baseline: Duration,
    /// Only this key.
    #[arg(long, value_name = "NAME")]
    pub key: Option<String>,
    /// Only keys of this virtual token (default: every token).
    #[arg(long, value_name = "LABEL")]
    pub token: Option<String>,
    /// Volume spike: more than this many times the baseline's mean uses per window ...
    #[arg(long, value_name = "N", default_value_t = keyward_protocol::admin::AnomalyThresholds::default().spike_factor,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub spike_factor: u64,
    /// ... and more than this many uses in the window.
    #[arg(long, value_name = "N", default_value_t = keyward_protocol::admin::AnomalyThresholds::default().spike_floor)]
    pub spike_floor: u64,
}

/// `audit query --result`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ResultFilter {
    /// Only refused or failed operations.
    Denied,
    /// Every result.
    Any,
}

/// `--key`: a key file or a `pkcs11:` URI (checked here: a bad URI is a
/// usage error).
fn parse_key(text: &str) -> Result<KeySource, String> {
    KeySource::parse(text)
}

/// `--state`: a key state as the inventory names it.
fn parse_state(text: &str) -> Result<keyward_policy::KeyState, String> {
    text.parse().map_err(|_| {
        let names: Vec<_> = keyward_policy::KeyState::ALL
            .iter()
            .map(|s| s.as_str())
            .collect();
        format!("unknown state; one of {}", names.join(", "))
    })
}

/// One `--ops` item: an operation as the policy file names it.
fn parse_operation(text: &str) -> Result<keyward_policy::Operation, String> {
    let text = text.trim();
    text.parse::<keyward_policy::Operation>().map_err(|_| {
        let names: Vec<_> = keyward_policy::Operation::ALL
            .iter()
            .map(|o| o.as_str())
            .collect();
        format!("unknown operation {text:?}; one of {}", names.join(", "))
    })
}

/// `--for`, `--window`, `--baseline`: a duration ([`time::parse_duration`]:
/// everything the policy file's grammar reads, and years and fractions).
fn parse_period(text: &str) -> Result<Duration, String> {
    time::parse_duration(text)
}

/// `cert self-sign --days`: a plain number of days (as before), or a
/// [`time::parse_duration`] of whole days.
fn parse_days(text: &str) -> Result<u32, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<u32>()
            .map_err(|_| format!("{text:?} days is too long a validity"));
    }
    let d = time::parse_duration(text).map_err(|e| format!("{e}; or a number of days (365)"))?;
    let secs = d.as_secs();
    if d.subsec_nanos() != 0 || secs % 86_400 != 0 {
        return Err(format!(
            "{text:?}: a certificate is valid for whole days: write 90d, 2w or 1y"
        ));
    }
    u32::try_from(secs / 86_400).map_err(|_| format!("{text:?} is too long a validity"))
}

/// `--reason` where one is required: more than whitespace.
fn parse_reason(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        return Err(
            "a reason is required: say why, in words (it is kept in the key's history \
                    and the audit trail)"
                .into(),
        );
    }
    Ok(text.to_owned())
}

/// `--reason-code`: an RFC 5280 reason code, in any case or kebab-case.
fn parse_reason_code(text: &str) -> Result<keyward_policy::ReasonCode, String> {
    keyward_policy::ReasonCode::parse(text).map_err(|e| e.to_string())
}

/// `--reason-code` of a final change (revoke, destroy): any code but
/// `certificateHold`, a suspension's.
fn parse_final_code(text: &str) -> Result<keyward_policy::ReasonCode, String> {
    let code = parse_reason_code(text)?;
    if code.is_hold() {
        return Err(
            "certificateHold is a suspension's code (keyward key suspend); \
                    revoke and destroy are final"
                .into(),
        );
    }
    Ok(code)
}

/// `--adopt`: a CKA_ID in hex; `:` separators and a `0x` prefix are
/// allowed so that ids copied from other tools work.
pub fn parse_hex(text: &str) -> Result<CkaId, String> {
    let digits: String = text
        .strip_prefix("0x")
        .unwrap_or(text)
        .chars()
        .filter(|&c| c != ':')
        .collect();
    if digits.is_empty() {
        return Err("an empty CKA_ID cannot be adopted by id".into());
    }
    if !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("{text:?} is not hex"));
    }
    if !digits.len().is_multiple_of(2) {
        return Err(format!("{text:?} has an odd number of hex digits"));
    }
    hex::decode(&digits)
        .map(CkaId)
        .map_err(|e| format!("{text:?} is not hex: {e}"))
}

/// A `CKA_ID` given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CkaId(pub Vec<u8>);

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;
    use keyward_policy::ReasonCode;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("keyward").chain(args.iter().copied()))
    }

    fn ok(args: &[&str]) -> Cli {
        parse(args).unwrap_or_else(|e| panic!("{args:?} refused: {e}"))
    }

    fn bad(args: &[&str]) -> ErrorKind {
        match parse(args) {
            Ok(cli) => panic!("{args:?} accepted: {cli:?}"),
            Err(e) => {
                // Every refusal is a usage error: exit code 2.
                assert_eq!(e.exit_code(), 2, "{args:?}: {e}");
                e.kind()
            }
        }
    }

    fn token(t: &str) -> TokenArg {
        TokenArg {
            token: Some(t.into()),
        }
    }

    #[test]
    fn definitions_are_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = ok(&["status", "--json", "--admin-socket", "/tmp/a.sock"]);
        assert!(cli.json);
        assert_eq!(cli.admin_socket, Some(PathBuf::from("/tmp/a.sock")));
        assert!(matches!(cli.command, Command::Status));
        let cli = ok(&["--json", "key", "list"]);
        assert!(cli.json);
        let cli = ok(&["key", "list"]);
        assert!(!cli.json && cli.admin_socket.is_none());
        let cli = ok(&["policy", "check", "p.toml", "--json"]);
        assert!(cli.json);
        assert_eq!(
            bad(&[]),
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        );
        assert_eq!(bad(&["frobnicate"]), ErrorKind::InvalidSubcommand);
        assert_eq!(bad(&["status", "extra"]), ErrorKind::UnknownArgument);
    }

    #[test]
    fn key_create() {
        let cli = ok(&[
            "key",
            "create",
            "web",
            "--class",
            "tls",
            "--algorithm",
            "ec:p256",
            "--token",
            "t1",
            "--owner",
            "alice",
        ]);
        let Command::Key {
            command:
                KeyCommand::Create {
                    name,
                    class,
                    algorithm,
                    token: t,
                    owner,
                },
        } = cli.command
        else {
            panic!("{:?}", cli.command)
        };
        assert_eq!(
            (name.as_str(), class.as_str(), algorithm.as_deref()),
            ("web", "tls", Some("ec:p256"))
        );
        assert_eq!((t, owner.as_deref()), (token("t1"), Some("alice")));
        let cli = ok(&["key", "create", "web", "--class", "tls"]);
        assert!(matches!(
            cli.command,
            Command::Key {
                command: KeyCommand::Create {
                    algorithm: None,
                    owner: None,
                    token: TokenArg { token: None },
                    ..
                }
            }
        ));
        assert_eq!(
            bad(&["key", "create", "web"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            bad(&["key", "create", "--class", "tls"]),
            ErrorKind::MissingRequiredArgument
        );
    }

    #[test]
    fn key_list_show_rotate_verify() {
        let cli = ok(&["key", "list", "--token", "t1", "--state", "active"]);
        let Command::Key {
            command: KeyCommand::List { token: t, state },
        } = cli.command
        else {
            panic!()
        };
        assert_eq!(
            (t, state),
            (token("t1"), Some(keyward_policy::KeyState::Active))
        );
        ok(&["key", "list", "--state", "pre-activation"]);
        assert_eq!(
            bad(&["key", "list", "--state", "happy"]),
            ErrorKind::ValueValidation
        );
        for (cmd, pick) in [
            (
                "show",
                (|c| matches!(c, KeyCommand::Show(_))) as fn(&KeyCommand) -> bool,
            ),
            ("rotate", |c| matches!(c, KeyCommand::Rotate(_))),
            ("verify", |c| matches!(c, KeyCommand::Verify(_))),
        ] {
            let cli = ok(&["key", cmd, "web", "--token", "t1"]);
            let Command::Key { command } = cli.command else {
                panic!()
            };
            assert!(pick(&command), "{cmd}: {command:?}");
            let (KeyCommand::Show(k)
            | KeyCommand::Rotate(RotateArgs { key: k, .. })
            | KeyCommand::Verify(k)) = command
            else {
                panic!()
            };
            assert_eq!(
                k,
                KeyArgs {
                    name: "web".into(),
                    token: token("t1")
                }
            );
            assert_eq!(bad(&["key", cmd]), ErrorKind::MissingRequiredArgument);
            assert_eq!(bad(&["key", cmd, "a", "b"]), ErrorKind::UnknownArgument);
        }
    }

    #[test]
    fn key_transitions() {
        for cmd in ["activate", "resume", "deactivate"] {
            let cli = ok(&["key", cmd, "web", "--reason", "ticket 42"]);
            let Command::Key { command } = cli.command else {
                panic!()
            };
            let t = match (cmd, command) {
                ("activate", KeyCommand::Activate(t))
                | ("resume", KeyCommand::Resume(t))
                | ("deactivate", KeyCommand::Deactivate(t)) => t,
                (_, other) => panic!("{cmd} parsed as {other:?}"),
            };
            assert_eq!(t.key.name, "web");
            assert_eq!(t.reason.as_deref(), Some("ticket 42"));
            // The reason is optional; a code is no part of these.
            ok(&["key", cmd, "web"]);
            assert_eq!(bad(&["key", cmd]), ErrorKind::MissingRequiredArgument);
            assert_eq!(
                bad(&["key", cmd, "web", "--reason-code", "superseded"]),
                ErrorKind::UnknownArgument
            );
            assert_eq!(
                bad(&["key", cmd, "web", "--rotate"]),
                ErrorKind::UnknownArgument
            );
        }
        let cli = ok(&[
            "key",
            "revoke",
            "web",
            "--rotate",
            "--token",
            "t1",
            "--reason",
            "leaked",
            "--reason-code",
            "key-compromise",
        ]);
        let Command::Key {
            command: KeyCommand::Revoke { transition, rotate },
        } = cli.command
        else {
            panic!()
        };
        assert!(rotate);
        assert_eq!(transition.key.token, token("t1"));
        assert_eq!(transition.reason, "leaked");
        assert_eq!(transition.code, ReasonCode::KeyCompromise);
        assert!(matches!(
            ok(&[
                "key",
                "revoke",
                "web",
                "--reason",
                "r",
                "--reason-code",
                "superseded"
            ])
            .command,
            Command::Key {
                command: KeyCommand::Revoke { rotate: false, .. }
            }
        ));
    }

    #[test]
    fn suspend_revoke_and_destroy_need_a_reason_and_a_code() {
        // Suspend: the code defaults to certificateHold.
        let suspend =
            |args: &[&str]| match ok(&[&["key", "suspend", "web"][..], args].concat()).command {
                Command::Key {
                    command: KeyCommand::Suspend(s),
                } => (s.reason, s.code),
                other => panic!("{other:?}"),
            };
        assert_eq!(
            suspend(&["--reason", "holiday"]),
            ("holiday".into(), ReasonCode::CertificateHold)
        );
        assert_eq!(
            suspend(&["--reason", "audit", "--reason-code", "KEYCOMPROMISE"]),
            ("audit".into(), ReasonCode::KeyCompromise)
        );
        let retire = |cmd: &str, args: &[&str]| match ok(&[&["key", cmd, "web"][..], args].concat())
            .command
        {
            Command::Key {
                command: KeyCommand::Destroy(r),
            }
            | Command::Key {
                command: KeyCommand::Revoke { transition: r, .. },
            } => (r.reason, r.code),
            other => panic!("{other:?}"),
        };
        for cmd in ["revoke", "destroy"] {
            for (text, code) in [
                ("keyCompromise", ReasonCode::KeyCompromise),
                ("cACompromise", ReasonCode::CaCompromise),
                ("ca-compromise", ReasonCode::CaCompromise),
                ("cessation-of-operation", ReasonCode::CessationOfOperation),
                ("Superseded", ReasonCode::Superseded),
                ("unspecified", ReasonCode::Unspecified),
            ] {
                assert_eq!(
                    retire(cmd, &["--reason", "r", "--reason-code", text]),
                    ("r".into(), code),
                    "{cmd} {text}"
                );
            }
            // The code is required, and not a suspension's.
            assert_eq!(
                bad(&["key", cmd, "web", "--reason", "r"]),
                ErrorKind::MissingRequiredArgument
            );
            for code in [
                "certificateHold",
                "certificate-hold",
                "removeFromCRL",
                "",
                "1",
                "x",
            ] {
                assert_eq!(
                    bad(&["key", cmd, "web", "--reason", "r", "--reason-code", code]),
                    ErrorKind::ValueValidation,
                    "{cmd} {code:?}"
                );
            }
        }
        for cmd in ["suspend", "revoke", "destroy"] {
            let code = ["--reason-code", "superseded"];
            // The reason is required, and more than whitespace.
            assert_eq!(
                bad(&[&["key", cmd, "web"][..], &code].concat()),
                ErrorKind::MissingRequiredArgument,
                "{cmd}"
            );
            for blank in ["", " ", "\t\n"] {
                let e = parse(&[&["key", cmd, "web", "--reason", blank][..], &code].concat())
                    .unwrap_err();
                assert_eq!(e.exit_code(), 2);
                assert_eq!(e.kind(), ErrorKind::ValueValidation, "{cmd} {blank:?}");
                assert!(e.to_string().contains("a reason is required"), "{e}");
            }
        }
        // An unknown code's error lists the names.
        let e = parse(&[
            "key",
            "suspend",
            "web",
            "--reason",
            "r",
            "--reason-code",
            "oops",
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("keyCompromise") && e.contains("aACompromise"),
            "{e}"
        );
    }

    #[test]
    fn request_decisions_and_admin_key() {
        let decide = |args: &[&str]| {
            let mut all = vec!["request"];
            all.extend_from_slice(args);
            match ok(&all).command {
                Command::Request {
                    command: RequestCommand::Approve(d),
                } => ("approve", d),
                Command::Request {
                    command: RequestCommand::Deny(d),
                } => ("deny", d),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            decide(&["approve", "r1"]),
            (
                "approve",
                DecideArgs {
                    id: "r1".into(),
                    key: None,
                    module: None
                }
            )
        );
        assert_eq!(
            decide(&["deny", "r1", "--key", "/k.pem"]),
            (
                "deny",
                DecideArgs {
                    id: "r1".into(),
                    key: Some(KeySource::File("/k.pem".into())),
                    module: None
                }
            )
        );
        let (_, d) = decide(&[
            "approve",
            "r1",
            "--key",
            "pkcs11:token=bob;object=admin",
            "--module",
            "/usr/lib/softhsm/libsofthsm2.so",
        ]);
        let Some(KeySource::Pkcs11(uri)) = d.key else {
            panic!()
        };
        assert_eq!(uri.object.as_deref(), Some("admin"));
        assert_eq!(d.module, Some("/usr/lib/softhsm/libsofthsm2.so".into()));
        // A bad URI, a PIN in the URI, --module without --key: usage errors.
        assert_eq!(
            bad(&[
                "request",
                "approve",
                "r1",
                "--key",
                "pkcs11:token=a;token=b"
            ]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            bad(&["request", "approve", "r1", "--key", "pkcs11:?pin-value=1"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            bad(&["request", "approve", "r1", "--module", "/m.so"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            bad(&["request", "approve"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            bad(&["request", "approve", "r1", "--pin", "1"]),
            ErrorKind::UnknownArgument
        );

        assert!(matches!(
            ok(&["request", "cancel", "r1", "--reason", "typo"]).command,
            Command::Request { command: RequestCommand::Cancel { id, reason: Some(r) } }
                if id == "r1" && r == "typo"
        ));
        assert!(matches!(
            ok(&["request", "cancel", "r1"]).command,
            Command::Request {
                command: RequestCommand::Cancel { reason: None, .. }
            }
        ));

        assert!(matches!(
            ok(&["admin-key", "show", "k.pem"]).command,
            Command::AdminKey { command: AdminKeyCommand::Show { key: KeySource::File(f), module: None } }
                if f == std::path::Path::new("k.pem")
        ));
        assert!(matches!(
            ok(&[
                "admin-key",
                "show",
                "pkcs11:token=t",
                "--module",
                "/m.so",
                "--json"
            ])
            .command,
            Command::AdminKey {
                command: AdminKeyCommand::Show {
                    key: KeySource::Pkcs11(_),
                    module: Some(_)
                }
            }
        ));
        assert_eq!(
            bad(&["admin-key", "show"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            bad(&["admin-key", "show", "pkcs11:object"]),
            ErrorKind::ValueValidation
        );
    }

    #[test]
    fn token_init() {
        let cli = ok(&["token", "init", "lab", "--reason", "reuse it"]);
        let Command::Token {
            command: TokenCommand::Init { token, reason },
        } = cli.command
        else {
            panic!()
        };
        assert_eq!((token.as_str(), reason.as_str()), ("lab", "reuse it"));
        // The token and the reason are required.
        assert_eq!(
            bad(&["token", "init", "lab"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            bad(&["token", "init", "--reason", "x"]),
            ErrorKind::MissingRequiredArgument
        );
    }

    #[test]
    fn key_recover() {
        let cli = ok(&[
            "key", "recover", "old", "--for", "7d", "--reason", "archive", "--token", "t1",
        ]);
        let Command::Key {
            command: KeyCommand::Recover { key, for_, reason },
        } = cli.command
        else {
            panic!()
        };
        assert_eq!((key.name.as_str(), key.token), ("old", token("t1")));
        assert_eq!(for_, Duration::from_secs(7 * 86_400));
        assert_eq!(reason, "archive");
        // The duration and the reason are required; a bare number is no
        // duration.
        assert_eq!(
            bad(&["key", "recover", "old", "--reason", "x"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            bad(&["key", "recover", "old", "--for", "1d"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            bad(&["key", "recover", "old", "--for", "7", "--reason", "x"]),
            ErrorKind::ValueValidation
        );
        let cli = ok(&["key", "recover", "old", "--for", "1.5h", "--reason", "x"]);
        assert!(matches!(
            cli.command,
            Command::Key { command: KeyCommand::Recover { for_, .. } }
                if for_ == Duration::from_secs(5_400)
        ));
    }

    #[test]
    fn grant_add() {
        let cli = ok(&[
            "grant",
            "add",
            "web",
            "nginx",
            "--ops",
            "sign,verify",
            "--until",
            "2026-12-01T00:00:00Z",
            "--token",
            "t1",
        ]);
        let Command::Grant {
            command:
                GrantCommand::Add {
                    key,
                    application,
                    ops,
                    until,
                    for_,
                    token: t,
                },
        } = cli.command
        else {
            panic!()
        };
        assert_eq!((key.as_str(), application.as_str()), ("web", "nginx"));
        assert_eq!(
            ops,
            [
                keyward_policy::Operation::Sign,
                keyward_policy::Operation::Verify
            ]
        );
        assert_eq!(until, Some(1_796_083_200));
        assert_eq!((for_, t), (None, token("t1")));

        let cli = ok(&[
            "grant", "add", "web", "nginx", "--ops", "sign", "--for", "8h",
        ]);
        assert!(matches!(
            cli.command,
            Command::Grant {
                command: GrantCommand::Add { until: None, for_: Some(d), .. }
            } if d == Duration::from_secs(8 * 3600)
        ));
        // Repeating the flag adds operations too.
        let cli = ok(&["grant", "add", "k", "a", "--ops", "sign", "--ops", "verify"]);
        assert!(matches!(
            cli.command,
            Command::Grant { command: GrantCommand::Add { ops, .. } } if ops == [keyward_policy::Operation::Sign, keyward_policy::Operation::Verify]
        ));

        assert_eq!(
            bad(&["grant", "add", "web", "nginx"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            bad(&["grant", "add", "web", "--ops", "sign"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            bad(&["grant", "add", "web", "nginx", "--ops", "sing"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            bad(&["grant", "add", "web", "nginx", "--ops", "sign,,verify"]),
            ErrorKind::ValueValidation
        );
        for until in ["2026-02-30", "1x", "-7d", "999999y", "2026-12-01T00:00:00"] {
            let until = format!("--until={until}");
            assert_eq!(
                bad(&["grant", "add", "k", "a", "--ops", "sign", &until]),
                ErrorKind::ValueValidation,
                "{until}"
            );
        }
        // A date is midnight UTC; a duration counts forward from now.
        let until =
            |text: &str| match ok(&["grant", "add", "k", "a", "--ops", "sign", "--until", text])
                .command
            {
                Command::Grant {
                    command: GrantCommand::Add { until: Some(u), .. },
                } => u,
                other => panic!("{other:?}"),
            };
        assert_eq!(until("2026-12-01"), 1_796_083_200);
        let before = time::now();
        let in_a_week = until("7d");
        assert!(
            (before + 7 * 86_400..=time::now() + 7 * 86_400).contains(&in_a_week),
            "{in_a_week}"
        );
        assert_eq!(
            bad(&["grant", "add", "k", "a", "--ops", "sign", "--for", "8"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            bad(&[
                "grant",
                "add",
                "k",
                "a",
                "--ops",
                "sign",
                "--for",
                "8h",
                "--until",
                "2026-12-01T00:00:00Z",
            ]),
            ErrorKind::ArgumentConflict
        );
    }

    #[test]
    fn grant_remove_and_list() {
        let cli = ok(&["grant", "remove", "web", "nginx", "--token", "t1"]);
        assert!(matches!(
            cli.command,
            Command::Grant { command: GrantCommand::Remove { key, application, token: t } }
                if key == "web" && application == "nginx" && t == token("t1")
        ));
        assert_eq!(
            bad(&["grant", "remove", "web"]),
            ErrorKind::MissingRequiredArgument
        );
        let cli = ok(&["grant", "list"]);
        assert!(matches!(
            cli.command,
            Command::Grant {
                command: GrantCommand::List { key: None, .. }
            }
        ));
        let cli = ok(&["grant", "list", "web", "--token", "t1"]);
        assert!(matches!(
            cli.command,
            Command::Grant { command: GrantCommand::List { key: Some(k), token: t } }
                if k == "web" && t == token("t1")
        ));
        assert_eq!(
            bad(&["grant", "list", "a", "b"]),
            ErrorKind::UnknownArgument
        );
    }

    #[test]
    fn app_pin() {
        assert!(matches!(
            ok(&["app", "list"]).command,
            Command::App {
                command: AppCommand::List
            }
        ));
        assert_eq!(bad(&["app", "list", "x"]), ErrorKind::UnknownArgument);
        assert!(matches!(
            ok(&["pin", "unlock", "t1"]).command,
            Command::Pin { command: PinCommand::Unlock { token, role: None, application: None } } if token == "t1"
        ));
        assert!(matches!(
            ok(&["pin", "unlock", "t1", "--role", "so"]).command,
            Command::Pin {
                command: PinCommand::Unlock {
                    role: Some(PinRoleArg::So),
                    ..
                }
            }
        ));
        assert!(matches!(
            ok(&["pin", "unlock", "t1", "--app", "web"]).command,
            Command::Pin { command: PinCommand::Unlock { application: Some(a), .. } } if a == "web"
        ));
        assert_eq!(
            bad(&["pin", "unlock", "t1", "--role", "admin"]),
            ErrorKind::InvalidValue
        );
        assert_eq!(bad(&["pin", "unlock"]), ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn discover() {
        let Command::Discover(d) = ok(&["discover"]).command else {
            panic!()
        };
        assert_eq!(
            d,
            DiscoverArgs {
                token: None,
                adopt: None,
                name: None,
                class: None
            }
        );
        let Command::Discover(d) = ok(&[
            "discover", "--token", "t1", "--adopt", "0a:FF", "--name", "old", "--class", "tls",
        ])
        .command
        else {
            panic!()
        };
        assert_eq!(d.adopt, Some(CkaId(vec![0x0a, 0xff])));
        assert_eq!(
            (d.token.as_deref(), d.name.as_deref(), d.class.as_deref()),
            (Some("t1"), Some("old"), Some("tls"))
        );
        assert_eq!(
            bad(&["discover", "--adopt", "0a"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            bad(&["discover", "--adopt", "0a", "--name", "old"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            bad(&["discover", "--name", "old"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            bad(&["discover", "--adopt", "xyz", "--name", "n", "--class", "c"]),
            ErrorKind::ValueValidation
        );
    }

    fn audit(args: &[&str]) -> AuditCommand {
        let mut all = vec!["audit"];
        all.extend_from_slice(args);
        match ok(&all).command {
            Command::Audit { command } => command,
            other => panic!("{args:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn audit_verify_and_tail() {
        assert_eq!(audit(&["verify"]), AuditCommand::Verify { anchor: None });
        assert!(ok(&["audit", "verify", "--json"]).json);
        assert_eq!(
            audit(&["verify", "--anchor", "-"]),
            AuditCommand::Verify {
                anchor: Some(PathBuf::from("-"))
            }
        );
        assert_eq!(
            audit(&["verify", "--anchor", "/tmp/anchors"]),
            AuditCommand::Verify {
                anchor: Some(PathBuf::from("/tmp/anchors"))
            }
        );
        assert_eq!(
            bad(&["audit", "verify", "--anchor"]),
            ErrorKind::InvalidValue
        );
        assert_eq!(audit(&["anchor"]), AuditCommand::Anchor);
        assert_eq!(
            bad(&["audit", "anchor", "extra"]),
            ErrorKind::UnknownArgument
        );
        assert_eq!(
            bad(&["audit", "verify", "extra"]),
            ErrorKind::UnknownArgument
        );
        assert_eq!(
            bad(&["audit"]),
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        );
        assert_eq!(bad(&["audit", "frob"]), ErrorKind::InvalidSubcommand);

        assert_eq!(
            audit(&["tail"]),
            AuditCommand::Tail {
                n: 20,
                follow: false
            }
        );
        assert_eq!(
            audit(&["tail", "-n", "5", "--follow"]),
            AuditCommand::Tail { n: 5, follow: true }
        );
        assert_eq!(
            audit(&["tail", "--lines", "100000"]),
            AuditCommand::Tail {
                n: 100_000,
                follow: false
            }
        );
        assert_eq!(
            audit(&["tail", "-n5"]),
            AuditCommand::Tail {
                n: 5,
                follow: false
            }
        );
        for n in ["0", "x", "4294967296", ""] {
            assert_eq!(
                bad(&["audit", "tail", "-n", n]),
                ErrorKind::ValueValidation,
                "-n {n:?}"
            );
        }
        // Taken for a flag; a usage error (exit 2) all the same.
        bad(&["audit", "tail", "-n", "-1"]);
        assert_eq!(bad(&["audit", "tail", "-n"]), ErrorKind::InvalidValue);
        assert_eq!(
            bad(&["audit", "tail", "--key", "k"]),
            ErrorKind::UnknownArgument
        );
    }

    #[test]
    fn audit_query() {
        let all = AuditQueryArgs {
            key: None,
            application: None,
            since: None,
            until: None,
            result: ResultFilter::Any,
            limit: 1000,
        };
        assert_eq!(audit(&["query"]), AuditCommand::Query(all.clone()));
        assert_eq!(
            audit(&[
                "query",
                "--key",
                "web-tls",
                "--app",
                "nginx",
                "--since",
                "2026-01-31T18:00:00Z",
                "--until",
                "2026-12-01T02:00:00+02:00",
                "--result",
                "denied",
                "--limit",
                "50",
            ]),
            AuditCommand::Query(AuditQueryArgs {
                key: Some("web-tls".into()),
                application: Some("nginx".into()),
                since: Some(1_769_882_400),
                until: Some(1_796_083_200),
                result: ResultFilter::Denied,
                limit: 50,
            })
        );
        // Past times are what a query is about: accepted (unlike grant add).
        assert_eq!(
            audit(&[
                "query",
                "--until",
                "2001-01-01T00:00:00Z",
                "--result",
                "any"
            ]),
            AuditCommand::Query(AuditQueryArgs {
                until: Some(978_307_200),
                ..all
            })
        );
        // A date is midnight UTC; a duration counts back from now, for
        // --until too.
        let q = |args: &[&str]| match audit(&[&["query"][..], args].concat()) {
            AuditCommand::Query(q) => q,
            other => panic!("{other:?}"),
        };
        assert_eq!(q(&["--since", "2026-12-01"]).since, Some(1_796_083_200));
        let before = time::now();
        let got = q(&["--since", "1h", "--until", "30m"]);
        let (since, until) = (got.since.unwrap(), got.until.unwrap());
        assert!(
            (before - 3_600..=time::now() - 3_600).contains(&since),
            "{since}"
        );
        assert!(
            (before - 1_800..=time::now() - 1_800).contains(&until),
            "{until}"
        );
        for args in [
            &["--since", "yesterday"][..],
            &["--until", "2026-02-30"],
            &["--since", "1x"],
            &["--since", ""],
            &["--since=-1h"],
            &["--since", "1h ago"],
            &["--since", "999999y"],
            &["--since", "2026-12-01T00:00:00"],
            &["--result", "ok"],
            &["--result", "DENIED"],
            &["--limit", "0"],
            &["--limit", "many"],
        ] {
            let mut all = vec!["audit", "query"];
            all.extend_from_slice(args);
            assert!(
                matches!(
                    bad(&all),
                    ErrorKind::ValueValidation | ErrorKind::InvalidValue
                ),
                "{args:?}"
            );
        }
        assert_eq!(
            bad(&["audit", "query", "web-tls"]),
            ErrorKind::UnknownArgument
        );
        assert_eq!(
            bad(&["audit", "query", "--application", "nginx"]),
            ErrorKind::UnknownArgument
        );
    }

    fn report(args: &[&str]) -> ReportArgs {
        let mut all = vec!["report"];
        all.extend_from_slice(args);
        match ok(&all).command {
            Command::Report(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn report_durations_and_options() {
        let r = report(&[]);
        assert_eq!(
            (r.window, r.baseline),
            (Duration::from_secs(3600), Duration::from_secs(7 * 86_400))
        );
        assert_eq!((r.key, r.token), (None, None));
        assert_eq!((r.spike_factor, r.spike_floor), (10, 100));
        for (text, secs) in [
            ("30s", 30),
            ("15m", 900),
            ("2h", 7200),
            ("7d", 604_800),
            ("1w1d", 691_200),
            ("1.5h", 5_400),
            ("1y", 365 * 86_400),
        ] {
            assert_eq!(
                report(&["--window", text]).window,
                Duration::from_secs(secs),
                "{text}"
            );
            assert_eq!(
                report(&["--baseline", text]).baseline,
                Duration::from_secs(secs),
                "{text}"
            );
        }
        let r = report(&[
            "--key",
            "k",
            "--token",
            "t",
            "--spike-factor",
            "3",
            "--spike-floor",
            "0",
        ]);
        assert_eq!(
            (r.key.as_deref(), r.token.as_deref()),
            (Some("k"), Some("t"))
        );
        assert_eq!((r.spike_factor, r.spike_floor), (3, 0));
        for bad_duration in [
            "", "0s", "15", "m", "5x", "-1h", "200000w", "999999y", "1mo",
        ] {
            let arg = format!("--window={bad_duration}");
            assert_eq!(
                bad(&["report", &arg]),
                ErrorKind::ValueValidation,
                "{bad_duration:?}"
            );
        }
        assert_eq!(
            bad(&["report", "--spike-factor", "0"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(bad(&["report", "extra"]), ErrorKind::UnknownArgument);
    }

    #[test]
    fn certificate_validity_in_days_or_a_duration() {
        for (text, days) in [
            ("365", 365),
            ("1", 1),
            ("90d", 90),
            ("2w", 14),
            ("1y", 365),
            ("1y30d", 395),
            ("48h", 2),
        ] {
            assert_eq!(parse_days(text), Ok(days), "{text}");
        }
        for (text, why) in [
            ("", "empty"),
            ("1.5d", "not a duration"),
            ("36h", "whole days"),
            ("1.5h", "whole days"),
            ("1x", "not a duration"),
            ("-1d", "negative"),
            ("999999y", "longer than 100 years"),
            ("99999999999", "too long"),
        ] {
            let e = parse_days(text).unwrap_err();
            assert!(e.contains(why), "{text:?}: {e}");
        }
        let days = |args: &[&str]| match ok(&[
            &["cert", "self-sign", "web", "--subject", "CN=w"][..],
            args,
        ]
        .concat())
        .command
        {
            Command::Cert {
                command: CertCommand::SelfSign { days, .. },
            } => days,
            other => panic!("{other:?}"),
        };
        assert_eq!(days(&[]), 365);
        assert_eq!(days(&["--days", "30"]), 30);
        assert_eq!(days(&["--valid-for", "1y"]), 365);
        assert_eq!(
            bad(&[
                "cert",
                "self-sign",
                "web",
                "--subject",
                "CN=w",
                "--days",
                "12h"
            ]),
            ErrorKind::ValueValidation
        );
    }

    #[test]
    fn hex() {
        assert_eq!(parse_hex("00ab"), Ok(CkaId(vec![0, 0xab])));
        assert_eq!(parse_hex("0x01:02"), Ok(CkaId(vec![1, 2])));
        assert_eq!(
            parse_hex("DEADbeef"),
            Ok(CkaId(vec![0xde, 0xad, 0xbe, 0xef]))
        );
        for bad in ["", "0x", "abc", "zz", "+1", "é1"] {
            assert!(parse_hex(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn backup_custodian_verbs() {
        let Command::Backup { command } =
            ok(&["backup", "custodian-key", "new", "--out", "me.age"]).command
        else {
            panic!("not a backup command");
        };
        assert_eq!(
            command,
            BackupCommand::CustodianKey {
                command: CustodianKeyCommand::New {
                    out: PathBuf::from("me.age")
                }
            }
        );
        let Command::Backup { command } = ok(&[
            "backup",
            "share",
            "check",
            "s.age",
            "--identity",
            "me.age",
            "--json",
        ])
        .command
        else {
            panic!("not a backup command");
        };
        assert_eq!(
            command,
            BackupCommand::Share {
                command: ShareCommand::Check {
                    share: PathBuf::from("s.age"),
                    identity: PathBuf::from("me.age")
                }
            }
        );
        assert_eq!(
            bad(&["backup", "custodian-key", "new"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            bad(&["backup", "share", "check", "s.age"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            bad(&["backup", "share", "check", "--identity", "me.age"]),
            ErrorKind::MissingRequiredArgument
        );
    }

    #[test]
    fn help_lists_the_exit_codes() {
        let e = parse(&["--help"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::DisplayHelp);
        assert_eq!(e.exit_code(), 0);
        let help = e.to_string();
        for code in [
            "0  success",
            "3  the action needs approval",
            "7  the HSM",
            "8  the audit trail does not verify",
            "9  the audit trail no longer holds an anchored head",
        ] {
            assert!(help.contains(code), "{code:?} missing in\n{help}");
        }
    }
}
