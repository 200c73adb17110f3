"""The TAC objective."""

from keras_tac.src.losses.tac_loss import TACLoss
from keras_tac.src.losses.tac_loss import tac_loss
