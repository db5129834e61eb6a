//! The subcommands of `anatomy`, one module each.

pub mod ask;
pub mod augment;
pub mod convert;
pub mod curriculum;
pub mod inspect;
