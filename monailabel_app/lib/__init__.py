"""MAHT-Net MONAI Label app: datastore, infer, training, scoring (a thin shell over ``maht_net``)."""
