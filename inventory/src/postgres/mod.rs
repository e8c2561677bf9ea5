//! The fleet's shared store in PostgreSQL. For now only its schema:
//! [`migrate`] brings a database to [`SCHEMA_VERSION`], the same steps as
//! the SQLite store's in PostgreSQL's dialect (same tables, columns,
//! constraints and indexes).

mod schema;

pub use schema::{migrate, SCHEMA_VERSION};

impl From<::postgres::Error> for crate::Error {
    fn from(e: ::postgres::Error) -> crate::Error {
        crate::Error::Storage(Box::new(e))
    }
}
