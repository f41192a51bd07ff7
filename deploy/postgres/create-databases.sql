-- Run once by the postgres image on an empty data volume: one database per service,
-- since each service owns its own store.
CREATE DATABASE accounts;
CREATE DATABASE transfers;
