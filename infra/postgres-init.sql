-- The first start of the postgres service creates the `prefect` database (POSTGRES_DB); MLflow's
-- tracking store and its basic-auth users get their own.
CREATE DATABASE mlflow;
CREATE DATABASE mlflow_auth;
