"""The local serving gateway: registered versions behind Databricks-style invocation URLs."""
