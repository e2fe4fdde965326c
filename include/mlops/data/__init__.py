"""Transaction data: schema, synthetic batch generator, reading batches, feature encoding."""
