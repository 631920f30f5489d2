//! Queries over the bus: a reconnecting client's session state, one trip, and the drivers
//! holding trips in some regions (for a starting matcher).

use protocol::ErrorCode;
use protocol::bus::{CommandError, QueryReply, TripQuery};
use protocol::client::Role;

use crate::Store;
use crate::error::StoreError;
use crate::rows::{DRIVER_COLUMNS, DriverColumns, TRIP_COLUMNS, trip_from_row};

/// The states in which a trip holds its driver.
const HOLDING_STATES: &str = "('offered', 'accepted', 'arrived', 'in_progress')";

impl Store {
    /// Answers a query.
    pub async fn query(&self, query: TripQuery) -> QueryReply {
        let kind = match &query {
            TripQuery::SessionState { .. } => "session_state",
            TripQuery::Trip { .. } => "trip",
            TripQuery::Drivers { .. } => "drivers",
            TripQuery::Zones { .. } => "zones",
        };
        let reply = match query {
            // From memory, with no connection: gateways ask every half second.
            TripQuery::Zones { known, after } => self.zones().page(known, after),
            query => match tokio::time::timeout(self.settings.command_timeout, self.answer(query))
                .await
            {
                Ok(Ok(reply)) => reply,
                Ok(Err(e)) => QueryReply::Error(e.into_command_error()),
                Err(_) => QueryReply::Error(CommandError::new(
                    ErrorCode::Unavailable,
                    "database did not answer in time",
                )),
            },
        };
        let outcome = match &reply {
            QueryReply::Error(error) => error.code.as_str(),
            _ => "ok",
        };
        metrics::counter!(crate::meters::QUERIES, "query" => kind, "outcome" => outcome)
            .increment(1);
        reply
    }

    async fn answer(&self, query: TripQuery) -> Result<QueryReply, StoreError> {
        let client = self.pool.get().await?;
        match query {
            TripQuery::SessionState { role, id } => {
                let (column, driver) = match role {
                    Role::Dispatcher => {
                        return Ok(QueryReply::SessionState {
                            driver: None,
                            trips: vec![],
                        });
                    }
                    Role::Rider => ("rider_id", None),
                    Role::Driver => {
                        let driver = client
                            .query_opt(
                                &format!(
                                    "SELECT {DRIVER_COLUMNS} FROM drivers WHERE driver_id = $1"
                                ),
                                &[&id],
                            )
                            .await?
                            .map(|row| DriverColumns::read(&row, 0).state());
                        ("driver_id", driver)
                    }
                };
                let rows = client
                    .query(
                        &format!(
                            "SELECT {TRIP_COLUMNS} FROM trips WHERE {column} = $1 \
                             AND state NOT IN ('completed', 'cancelled', 'expired') \
                             ORDER BY requested_at DESC LIMIT 20"
                        ),
                        &[&id],
                    )
                    .await?;
                Ok(QueryReply::SessionState {
                    driver,
                    trips: rows.iter().map(|r| trip_from_row(r).view).collect(),
                })
            }
            TripQuery::Trip { trip_id } => {
                let row = client
                    .query_opt(
                        &format!("SELECT {TRIP_COLUMNS} FROM trips WHERE trip_id = $1"),
                        &[&trip_id],
                    )
                    .await?;
                Ok(QueryReply::Trip(row.map(|r| trip_from_row(&r).view)))
            }
            TripQuery::Zones { known, after } => Ok(self.zones().page(known, after)),
            TripQuery::Drivers { regions } => {
                let rows = client
                    .query(
                        &format!(
                            "SELECT t.driver_id, t.trip_id, d.online, d.vehicle_class, d.capacity \
                             FROM trips t JOIN drivers d USING (driver_id) \
                             WHERE t.state IN {HOLDING_STATES} AND t.region = ANY($1)"
                        ),
                        &[&regions],
                    )
                    .await?;
                Ok(QueryReply::Drivers(
                    rows.iter()
                        .map(|row| DriverColumns::read(row, 2).bus(row.get(0), row.get(1)))
                        .collect(),
                ))
            }
        }
    }
}
