"""The rule engine: matching events to rules and deciding when a rule fires."""
