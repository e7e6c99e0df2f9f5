"""What a run leaves for people to read: pictures (`plots`), the dev evaluation with its
pictures (`dev_report`), TensorBoard scalars (`tensorboard`) and the seed report's table
(`reproduce`)."""
