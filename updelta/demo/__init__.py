"""The method zoo and its claims (`updelta demo`)."""
