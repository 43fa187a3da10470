//! SCIM filters, in two steps. `parse` turns text into a syntax tree ([`Filter`]), knowing
//! no schema; `typed` resolves that tree once against a resource type's schema into a
//! [`Resolved`] tree in which every name is an attribute and every value has its type.
//! Both walkers take the resolved tree: `query` compiles it to SQL on the read models, and
//! [`matches`] evaluates a value filter on one value of a multi-valued attribute (PATCH
//! `emails[type eq "work"]`), so a filter means the same in a list and in a PATCH.

mod eval;
mod parse;
mod typed;

pub use eval::matches;
pub use parse::{
    parse, parse_path, AttrPath, Filter, Op, ParseError, PatchPath, MAX_DEPTH, MAX_LEN,
};
pub use typed::{
    field, resolve, values, Cond, Expr, Field, Operand, ResolveError, Resolved, SubCond, Test,
};
