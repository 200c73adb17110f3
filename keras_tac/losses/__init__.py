"""The TAC objective."""

from keras_tac.losses.tac_loss import TACLoss
from keras_tac.losses.tac_loss import tac_loss
