//! Hierarchy files (TOML). (Being written.)
