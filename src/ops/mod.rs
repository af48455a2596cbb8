//! Operating kiln: logging now; metrics and health endpoints come with the
//! long-running commands.

pub mod logging;
