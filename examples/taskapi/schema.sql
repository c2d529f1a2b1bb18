-- The task API's schema for MariaDB / MySQL (InnoDB, utf8mb4).
--
-- Apply the whole file to the users database and to every shard: the users
-- database uses `users`, each shard uses `tasks` (the other table stays
-- empty). SQLite's version, which the embedded default creates by itself on
-- first start, is schema_sqlite.sql.

CREATE TABLE IF NOT EXISTS users (
    id            BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    email         VARCHAR(254)    NOT NULL,
    username      VARCHAR(32)     NOT NULL,
    password_hash VARCHAR(255)    NOT NULL,
    created_at    DATETIME(6)     NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY users_email (email),
    UNIQUE KEY users_username (username)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS tasks (
    id          BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    user_id     BIGINT UNSIGNED NOT NULL,
    title       VARCHAR(200)    NOT NULL,
    description TEXT            NOT NULL,
    status      VARCHAR(16)     NOT NULL DEFAULT 'todo',
    created_at  DATETIME(6)     NOT NULL,
    updated_at  DATETIME(6)     NOT NULL,
    PRIMARY KEY (id),
    -- (user_id, id): a user's tasks newest first without a sort.
    KEY tasks_user_id (user_id, id),
    KEY tasks_status (status),
    CONSTRAINT tasks_status_known CHECK (status IN ('todo', 'in_progress', 'done'))
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
