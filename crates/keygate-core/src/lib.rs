//! keygate's pure core: everything the gateway decides without touching a socket or a disk.
//!
//! Key format and checksum, the digest stored at rest, the model of clients and keys, scope
//! tokens, time and durations. The store, the limiters and the server build on these types; this
//! crate performs no I/O (its one system call is the OS CSPRNG when a key is generated).

pub mod decision;
pub mod digest;
pub mod duration;
pub mod import;
pub mod issuer;
pub mod key_format;
pub mod key_restrictions;
pub mod legacy_format;
pub mod limit;
pub mod model;
pub mod names;
pub mod policy;
pub mod render;
pub mod scope;
pub mod scope_need;
pub mod suspension;
pub mod time;

pub use digest::{Digester, KeyDigest};
pub use issuer::{DigestImportError, Issuer, KeyMaterial};
pub use key_format::SecretKey;
pub use key_format::{Alphabet, KeyFormat, KeyFormatError};
pub use key_restrictions::{KeyRestrictions, RestrictionError, RestrictionsChange};
pub use model::{
    ApiKey, Client, ClientId, KeyId, KeyState, LimitOverrides, SuspensionId, Unusable,
};
pub use names::{NameError, Slug};
pub use scope::{Scope, ScopeError};
pub use scope_need::{ScopeNeed, ScopeNeedError};
pub use time::{Clock, ManualClock, SystemClock, Timestamp};
