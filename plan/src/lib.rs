pub mod instruction;
pub mod shell;
pub mod syntax;
