pub use idem_runtime::*;
