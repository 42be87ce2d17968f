//! Row states in a database table: the local shadows (`_tidesync_rows`) and
//! the hub's row metadata use the same layout and the same code.
//!
//! Layout: `tbl`, `pk` (canonical key text), `vals` and `clocks` (typed JSON
//! maps), `deleted_at` (clock text or NULL) and `live` (derived, for
//! queries); primary key `(tbl, pk)`.

use std::collections::HashMap;

use sea_orm::sea_query::{
    Alias, ColumnDef, ColumnType, Expr, ExprTrait, Index, OnConflict, Query, StringLen, Table,
    TableCreateStatement,
};
use sea_orm::{ConnectionTrait, DbBackend};

use crate::error::Result;
use crate::merge::RowState;
use crate::schema::long_text;

/// DDL of a row-state table named `name`.
pub fn row_state_table(backend: DbBackend, name: &str) -> TableCreateStatement {
    let col = |n: &str, ty: ColumnType| {
        let mut c = ColumnDef::new_with_type(Alias::new(n), ty);
        c.not_null();
        c
    };
    Table::create()
        .table(Alias::new(name))
        .if_not_exists()
        .col(col("tbl", ColumnType::String(StringLen::N(64))))
        .col(col("pk", ColumnType::String(StringLen::N(700))))
        .col(col("vals", long_text(backend)))
        .col(col("clocks", long_text(backend)))
        .col(
            ColumnDef::new_with_type(
                Alias::new("deleted_at"),
                ColumnType::String(StringLen::N(64)),
            )
            .null(),
        )
        .col(col("live", ColumnType::Boolean))
        .primary_key(Index::create().col(Alias::new("tbl")).col(Alias::new("pk")))
        .to_owned()
}

/// Load the states of `keys` of `table` from the row-state table `store`.
/// Keys without a state are absent from the map.
pub async fn load_states<C: ConnectionTrait>(
    db: &C,
    store: &str,
    table: &str,
    keys: &[String],
) -> Result<HashMap<String, RowState>> {
    let mut out = HashMap::with_capacity(keys.len());
    for chunk in keys.chunks(500) {
        let q = Query::select()
            .columns(["pk", "vals", "clocks", "deleted_at"].map(Alias::new))
            .from(Alias::new(store))
            .and_where(Expr::col(Alias::new("tbl")).eq(table))
            .and_where(Expr::col(Alias::new("pk")).is_in(chunk.iter().cloned()))
            .to_owned();
        for r in db.query_all(&q).await? {
            let key: String = r.try_get("", "pk")?;
            out.insert(key, decode_state(&r)?);
        }
    }
    Ok(out)
}

/// Decode the `vals`, `clocks` and `deleted_at` columns of a row.
pub fn decode_state(r: &sea_orm::QueryResult) -> Result<RowState> {
    let vals: String = r.try_get("", "vals")?;
    let clocks: String = r.try_get("", "clocks")?;
    let deleted_at: Option<String> = r.try_get("", "deleted_at")?;
    Ok(RowState {
        vals: serde_json::from_str(&vals)?,
        clocks: serde_json::from_str(&clocks)?,
        deleted_at: deleted_at.map(|d| d.parse()).transpose()?,
    })
}

/// Insert or replace the states of rows of `table` (one statement per 200
/// rows).
pub async fn save_states<C: ConnectionTrait>(
    db: &C,
    store: &str,
    table: &str,
    states: &[(String, RowState)],
) -> Result<()> {
    let mut template = Query::insert();
    template
        .into_table(Alias::new(store))
        .columns(["tbl", "pk", "vals", "clocks", "deleted_at", "live"].map(Alias::new))
        .on_conflict(
            OnConflict::columns([Alias::new("tbl"), Alias::new("pk")])
                .update_columns(["vals", "clocks", "deleted_at", "live"].map(Alias::new))
                .to_owned(),
        );
    let mut rows = Vec::with_capacity(states.len());
    for (key, s) in states {
        let vals = serde_json::to_string(&s.vals)?;
        let clocks = serde_json::to_string(&s.clocks)?;
        let size = key.len() + vals.len() + clocks.len() + 80;
        rows.push((
            vec![
                table.into(),
                key.clone().into(),
                vals.into(),
                clocks.into(),
                s.deleted_at.map(|d| d.to_string()).into(),
                s.is_live().into(),
            ],
            size,
        ));
    }
    for q in crate::apply::batched(&template, rows) {
        db.execute(&q).await?;
    }
    Ok(())
}
