"""Operations that do not depend on who asks: the CLI, the HTTP API (and the
dashboard to come) call these, so each rule is written once. They take a
database connection and plain values, and raise BrokerErrors."""
