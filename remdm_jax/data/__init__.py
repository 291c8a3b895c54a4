"""Training data: text and molecule data sets through tensorflow-datasets (`datasets`, the only
module importing it), their source files (`fetch`) and the rows the training loop reads
(`batches`)."""
