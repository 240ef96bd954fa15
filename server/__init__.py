"""paramsched server: schedule engine, job stores, domain service and gRPC front end."""
